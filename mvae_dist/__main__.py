"""``python -m mvae_dist ...`` runs the ``mvae-dist`` command line (the same entry point)."""

from .launch.cli import main_entry

if __name__ == "__main__":
    main_entry()
