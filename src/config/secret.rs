//! A string that is never printed.
