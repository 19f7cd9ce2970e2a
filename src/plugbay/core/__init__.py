"""plugbay internals: one module per concern of go-plugin's protocol."""
