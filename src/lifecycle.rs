//! The refresh manager (product §6). Work in progress.
