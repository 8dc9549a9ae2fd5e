"""Creates a thin pool, two volumes and a snapshot with SPDK's Python client (JSONRPCClient).

Usage: pool_session.py SOCKET IMAGE. Makes the uring bdev Uring1 on IMAGE, the pool pool1 on
it (32 KiB data blocks), volumes pool1/volA (16 MiB) and pool1/volB (8 MiB) and the snapshot
pool1/snapA of volA, checks the errors of a second pool and a duplicate volume, then prints one
JSON object with what the daemon listed; the Rust test (tests/spdk_client.rs) checks it.
"""

import json
import sys

from spdk.rpc.client import JSONRPCClient, JSONRPCException


def expect_error(client, method, params, code):
    try:
        client.call(method, params)
    except JSONRPCException as e:
        text = e.message.split('response:')[-1]
        if '"code": %d' % code not in text:
            raise SystemExit('%s: expected %d, got %s' % (method, code, text))
        return text
    raise SystemExit('%s did not fail' % method)


def main():
    socket, image = sys.argv[1], sys.argv[2]
    seen = {}
    with JSONRPCClient(socket, timeout=30.0) as client:
        seen['uring'] = client.bdev_uring_create(filename=image, name='Uring1', block_size=4096)
        seen['pool'] = client.call('bdev_thin_pool_create', {
            'bdev_name': 'Uring1', 'pool_name': 'pool1', 'data_block_size': 32768,
            'discard': 'no_passdown'})
        seen['volumes'] = [
            client.call('bdev_thin_create',
                        {'pool_name': 'pool1', 'volume_name': 'volA', 'size_in_mib': 16}),
            client.call('bdev_thin_create',
                        {'uuid': seen['pool'], 'volume_name': 'volB', 'size_in_mib': 8}),
        ]
        seen['snapshot'] = client.call('bdev_thin_snapshot',
                                       {'name': 'pool1/volA', 'snapshot_name': 'snapA'})
        seen['errors'] = [
            expect_error(client, 'bdev_thin_pool_create',
                         {'bdev_name': 'Uring1', 'pool_name': 'pool9'}, -17),
            expect_error(client, 'bdev_thin_create',
                         {'pool_name': 'pool1', 'volume_name': 'volA', 'size_in_mib': 1}, -17),
            expect_error(client, 'bdev_thin_create',
                         {'pool_name': 'pool1', 'volume_name': 'volC'}, -32602),
        ]
        seen['get_pools'] = client.call('bdev_thin_get_pools', {'pool_name': 'pool1'})
        seen['get_volumes'] = client.call('bdev_thin_get_volumes', {'pool_name': 'pool1'})
        seen['get_bdevs'] = client.bdev_get_bdevs(name='pool1/snapA')
    print(json.dumps(seen))


if __name__ == '__main__':
    main()
