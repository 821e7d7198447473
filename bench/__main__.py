"""``bench`` and ``python -m bench``: choose the memory allocator (bench/allocator.py), which may re-execute the
command, before torch and the commands are imported."""

from bench import allocator


def main() -> None:
    allocator.ensure()
    from bench.cli import app
    app()


if __name__ == "__main__":
    main()
