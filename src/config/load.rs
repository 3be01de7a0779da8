//! Loading from defaults, file and environment.
