"""bdev_thin's commands for SPDK's JSON-RPC client.

    PYTHONPATH=python spdk-rpc --plugin bdev_thin_rpc bdev_thin_pool_create Malloc0 pool0 \\
        --data-block-size 65536

Adds every ``bdev_thin_*`` method and our NBD-over-TCP ``nbd_*`` methods (API.md) to
``spdk-rpc``, with SPDK-style flags: positional arguments where ``bdev_lvol_*`` takes them,
``-u/--uuid`` and ``-l/--pool-name`` where lvol takes ``-u/--uuid`` and ``-l/--lvs-name``.
Parameters left unset are not sent; the daemon applies its defaults.
"""

import argparse

from spdk.rpc.cmd_parser import print_dict, print_json


def _call(method, printer, names):
    """The handler of one command: send the named arguments that were set, print the result."""

    def handler(args):
        params = {}
        for name in names:
            value = getattr(args, name, None)
            if value is not None:
                params[name] = value
        printer(args.client.call(method, params))

    return handler


def _pool_selector(p, what):
    p.add_argument('-u', '--uuid', help='UUID of the pool %s' % what)
    p.add_argument('-l', '--pool-name', help='Name of the pool %s' % what)


def _add(subparsers, method, help_text, printer, arguments):
    """Registers `method`; `arguments` are (flags, add_argument keywords) pairs."""
    p = subparsers.add_parser(method, help=help_text)
    names = []
    for flags, options in arguments:
        action = p.add_argument(*flags, **options)
        names.append(action.dest)
    p.set_defaults(func=_call(method, printer, names))
    return p


def spdk_rpc_plugin_initialize(subparsers):
    """Called by spdk-rpc --plugin bdev_thin_rpc."""
    uuid = (('-u', '--uuid'), {'help': 'UUID of the pool'})
    pool_name = (('-l', '--pool-name'), {'help': 'Name of the pool'})

    _add(subparsers, 'bdev_thin_pool_create',
         'Create a thin pool on a bdev; prints the pool UUID', print_json, [
             (('bdev_name',), {'help': 'Bdev that holds the data (and, by default, metadata)'}),
             (('pool_name',), {'help': 'Name of the new pool'}),
             (('-m', '--metadata-bdev-name'), {'help': 'Separate bdev for the metadata'}),
             (('-d', '--data-block-size'),
              {'type': int, 'help': 'Data block size in bytes (power of two, 4 KiB to 1 GiB; '
                                    'default 65536)'}),
             (('--discard',), {'choices': ['passdown', 'no_passdown', 'ignore'],
                               'help': 'What an unmap does (default passdown)'}),
             (('--zero-new-blocks',),
              {'action': argparse.BooleanOptionalAction, 'default': None,
               'help': 'Zero the rest of a newly provisioned block (default true)'}),
             (('--out-of-space',), {'choices': ['error', 'queue'],
                                    'help': 'Fail or queue writes when the pool is full'}),
             (('--no-space-timeout-s',),
              {'type': int, 'help': 'Longest a write waits for space, in seconds (default 60)'}),
             (('--low-water-mark',),
              {'type': int, 'help': 'Free data blocks below which the pool warns (default 0)'}),
             (('--commit-interval-ms',),
              {'type': int, 'help': 'Metadata commit period in ms (default 1000)'}),
             (('--max-growable-size-mib',),
              {'type': int, 'help': 'Largest size the pool can grow to, in MiB '
                                    '(default 4x the bdev)'}),
         ])
    _add(subparsers, 'bdev_thin_pool_delete', 'Delete a thin pool and every volume in it',
         print_json, [uuid, pool_name])
    _add(subparsers, 'bdev_thin_pool_grow', 'Grow a thin pool after its data bdev grew',
         print_json, [uuid, pool_name])
    _add(subparsers, 'bdev_thin_pool_check',
         'Check a read-only pool\'s metadata; clear needs_check if asked and clean',
         print_dict, [
             uuid,
             pool_name,
             (('-c', '--clear-needs-check'),
              {'action': 'store_true', 'default': None,
               'help': 'When the check passes, clear needs_check (the pool takes writes)'}),
         ])
    _add(subparsers, 'bdev_thin_get_pools', 'List thin pools (all, or the one named)',
         print_dict, [uuid, pool_name])
    _add(subparsers, 'bdev_thin_create',
         'Create a thin volume; prints its bdev name (the volume UUID)', print_json, [
             (('volume_name',), {'help': 'Name of the new volume (alias pool/volume)'}),
             (('size_in_mib',), {'type': int, 'help': 'Size in MiB'}),
             uuid,
             pool_name,
         ])
    _add(subparsers, 'bdev_thin_snapshot',
         'Snapshot a thin volume; prints the snapshot UUID', print_json, [
             (('name',), {'help': 'Origin volume: name, alias or UUID'}),
             (('snapshot_name',), {'help': 'Name of the snapshot'}),
         ])
    _add(subparsers, 'bdev_thin_delete', 'Delete a thin volume or snapshot', print_json, [
        (('name',), {'help': 'Volume: name, alias or UUID'}),
    ])
    _add(subparsers, 'bdev_thin_resize', 'Resize a thin volume', print_json, [
        (('name',), {'help': 'Volume: name, alias or UUID'}),
        (('size_in_mib',), {'type': int, 'help': 'New size in MiB'}),
    ])
    _add(subparsers, 'bdev_thin_get_volumes', 'List thin volumes (all, one, or one pool\'s)',
         print_dict, [
             (('-b', '--name'), {'help': 'Volume: name, alias or UUID'}),
             pool_name,
         ])

    _add(subparsers, 'nbd_server_start', 'Start serving NBD over TCP', print_json, [
        (('-a', '--listen-address'), {'help': 'Address to listen on (default 127.0.0.1)'}),
        (('-p', '--port'), {'type': int, 'help': 'TCP port (default 10809)'}),
    ])
    _add(subparsers, 'nbd_server_stop', 'Stop the NBD server', print_json, [])
    _add(subparsers, 'nbd_export_add', 'Export a bdev over NBD', print_json, [
        (('bdev_name',), {'help': 'Bdev to export: name, alias or UUID'}),
        (('-e', '--export-name'), {'help': 'Export name (default: the bdev\'s alias or name)'}),
        (('-r', '--read-only'), {'action': 'store_true', 'default': None,
                                 'help': 'Export read-only'}),
    ])
    _add(subparsers, 'nbd_export_remove', 'Remove an NBD export', print_json, [
        (('export_name',), {'help': 'Export name'}),
    ])
    _add(subparsers, 'nbd_get_exports', 'List NBD exports', print_dict, [])
