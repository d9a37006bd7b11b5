//! The `logplayer` command line.
