"""``python -m specdec.bench``: the Hydra benchmark (configs in ``specdec.configs``, see bench/README.md)."""
from .app import main

if __name__ == "__main__":
    main()
