"""Export a trained checkpoint as the serving artifact (sentiment/training/export.py):

    python export.py --checkpoint build/v1 --out build/v1/export --version 1
"""

from sentiment.training.export import main

if __name__ == "__main__":
    main()
