"""One module per command or command group; each validates, calls the library, prints with Rich."""
