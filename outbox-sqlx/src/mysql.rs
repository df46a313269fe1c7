//! MySQL / MariaDB store (placeholder until implemented).
