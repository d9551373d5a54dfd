import sys

from services.search.app import main

if __name__ == "__main__":
    sys.exit(main())
