"""Provider adapters: one package per provider, each with its adapter and its sandbox."""
