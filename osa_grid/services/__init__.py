"""Services: the shepherd loop and the use cases behind the CLI. They wire the core to the ports."""
