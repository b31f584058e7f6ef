"""The pure core: models, query language, grouping, planning and state machines. No I/O here."""
