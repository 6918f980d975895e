//! lb-dataplane
