"""`sensor dashboard`'s flags (kept apart so building the CLI parser never imports Flask)."""
from __future__ import annotations


def add_arguments(p, default_data_dir: str):
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data-dir", default=default_data_dir, help="this host's store (default %(default)s)")
    src.add_argument("--postgres", metavar="DSN", help="the fleet's central store instead of --data-dir")
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="ADDR:PORT",
                   help="where to serve (default 127.0.0.1:8080; any other address needs --token or "
                        "--password-file, and --tls-cert/--tls-key)")
    p.add_argument("--token", help="log in by opening /?token=TOKEN (default for a loopback address: none needed)")
    p.add_argument("--password-file", metavar="FILE", help="a file whose first line is the login password")
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument("--user", default=None, help="who acknowledges alerts here (default: the login name)")
