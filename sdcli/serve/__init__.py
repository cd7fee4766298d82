"""`sdcli serve`: an AUTOMATIC1111-compatible HTTP API over one warm Engine (needs the
`serve` extra: FastAPI and uvicorn)."""
