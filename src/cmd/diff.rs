//! `tcpdoctor diff BEFORE AFTER` (stub).
