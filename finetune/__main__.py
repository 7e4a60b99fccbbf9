"""``python -m finetune ...``: the command line (:func:`finetune.cli.main`), also as a module for launchers such as
``accelerate launch -m finetune fit ...``."""
from .cli import main

if __name__ == '__main__':
    main()
