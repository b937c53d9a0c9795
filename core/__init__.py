"""The torch-free core under training, export and serving: errors, options, the bundle contract,
similarity metrics, highlights and rendering. Standard library and numpy only."""
