//! Task specs, data readers and batching (being written).
