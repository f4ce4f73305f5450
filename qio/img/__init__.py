"""qio-img: qemu-img's companion commands on qio's block layer.

Each subcommand lives in its own module ``qio.img.<name>`` exposing ``run(argv) -> int``
(``argv[0]`` is the subcommand name, as qemu-img's ``img_<name>(argc, argv)`` sees it).
"""
