//! AF_PACKET backend.
