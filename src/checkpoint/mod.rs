//! Checkpoints: the stream position up to which every affected document has been written.
