"""The catalog: files, metadata, replicas, datasets, tasks, provenance and events (SQLAlchemy)."""
