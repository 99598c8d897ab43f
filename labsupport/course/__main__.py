"""`python -m labsupport.course run|report …`: run the notebooks headless, or print the last report card."""
import sys

from labsupport.course.runner import main

if __name__ == "__main__":
    sys.exit(main())
