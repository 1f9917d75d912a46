//! Throwaway Redis and Redis Cluster (being written).
