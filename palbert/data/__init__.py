"""The data layer: raw-file sources and readers, the prepare step, prepared splits and batching (layer 2 of docs/ARCHITECTURE.md)."""
