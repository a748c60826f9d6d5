"""`python -m train.huge_pages_status`: whether the commands run with glibc's huge-page tunable
here (`train.huge_pages`), and if not, why. Prints one line."""

from train import huge_pages

if __name__ == "__main__":
    print(huge_pages.status())
