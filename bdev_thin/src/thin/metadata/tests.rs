//! Tests of the metadata layer.
