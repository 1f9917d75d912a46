//! Throwaway PostgreSQL (being written).
