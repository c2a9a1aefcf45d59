"""Storage: tables and API schemas, engines, statistics as chunks and rollups, the reads the API and pages share."""
