"""The ground floor: where bytes live. URIs of local paths and object storage
(``uris``), atomic writes (``files``), paths that stay inside an output root
(``paths``), output roots on any pyarrow filesystem (``roots``), and the lease that
lets one writer at a time into an output root (``lease``). Knows nothing of PyTorch,
Ray or the CLI."""
