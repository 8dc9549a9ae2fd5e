"""Drives thin_tgt with SPDK's own Python client (spdk.rpc.client.JSONRPCClient).

Usage: client_session.py SOCKET. Prints one JSON object summarising what it saw; the Rust test
(tests/spdk_client.rs) checks it. Exits non-zero on any unexpected answer.
"""

import json
import sys

from spdk.rpc.client import JSONRPCClient, JSONRPCException


def main():
    socket = sys.argv[1]
    seen = {}
    with JSONRPCClient(socket, timeout=30.0) as client:
        seen['version'] = client.spdk_get_version()['version']
        # Keyword calls go through __getattr__, dropping None as the CLI does.
        seen['created'] = [
            client.bdev_malloc_create(name='PyMalloc0', num_blocks=2048, block_size=4096,
                                      uuid=None),
            client.call('bdev_null_create',
                        {'name': 'PyNull0', 'num_blocks': 1024, 'block_size': 512}),
        ]
        bdevs = client.bdev_get_bdevs(name='PyMalloc0')
        seen['get'] = {key: bdevs[0][key] for key in ('name', 'block_size', 'num_blocks')}
        seen['keys'] = list(bdevs[0].keys())
        # Errors raise JSONRPCException with the daemon's code and message.
        for method, params in (('bdev_get_bdevs', {'name': 'missing'}),
                               ('bdev_malloc_create', {'num_blocks': 'x', 'block_size': 512}),
                               ('no_such_method', {})):
            try:
                client.call(method, params)
            except JSONRPCException as e:
                seen.setdefault('errors', []).append(e.message.split('response:')[-1])
            else:
                raise SystemExit('%s did not fail' % method)
        # Many requests on one connection, one after another.
        seen['sequential'] = sum(1 for _ in range(50) if client.spdk_get_version())
    # A batch, as spdk-rpc -b sends it.
    with JSONRPCClient(socket, timeout=30.0, batch_mode=True) as client:
        results, errors = client.call_batch([
            {'method': 'bdev_get_bdevs', 'params': {'name': 'PyNull0'}},
            {'method': 'spdk_get_version'},
            {'method': 'bdev_null_delete', 'params': {'name': 'nope'}},
        ])
        seen['batch'] = {'results': len(results), 'errors': [e['code'] for e in errors]}
    print(json.dumps(seen))


if __name__ == '__main__':
    main()
