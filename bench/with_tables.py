#!/usr/bin/env python3
"""Creates the order store's DynamoDB tables on the emulator, then becomes the given command (exec).

The peer harness (../shared/bench, README "Workers") creates the topic and the queues but no tables. Workers that
write to the order store are run through this wrapper, e.g.

    worker_bench --names rust-store,node-ddb \
        'python3 bench/with_tables.py target/release/pedidos-worker' \
        'python3 bench/with_tables.py node bench/node-worker-ddb/index.js'

Tables: ORDERS_TABLE (default bench-orders: key `pk`, the `porCliente` and `recientes` indexes, as
crates/store/src/schema.rs) and IDEMPOTENCY_TABLE (default bench-idempotency: key `id`). Both names are exported to
the command. The calls are made with the harness's own user-agent app id (`bench-harness`), so its call counter does
not count this set-up as the worker's; it happens before the first message, outside the CPU-per-message window. The
process is replaced by the command (no extra process in the measured tree).
"""
import os
import sys

import boto3
from botocore.config import Config


def string(name):
    return {"AttributeName": name, "AttributeType": "S"}


def index(name, hash_key, range_key):
    return {"IndexName": name, "Projection": {"ProjectionType": "ALL"},
            "KeySchema": [{"AttributeName": hash_key, "KeyType": "HASH"},
                          {"AttributeName": range_key, "KeyType": "RANGE"}]}


def create(dynamodb, **table):
    try:
        dynamodb.create_table(BillingMode="PAY_PER_REQUEST", **table)
    except dynamodb.exceptions.ResourceInUseException:
        pass


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: with_tables.py COMMAND [ARGS...]")
    orders = os.environ.setdefault("ORDERS_TABLE", "bench-orders")
    idempotency = os.environ.setdefault("IDEMPOTENCY_TABLE", "bench-idempotency")
    dynamodb = boto3.client("dynamodb", endpoint_url=os.environ["AWS_ENDPOINT_URL"],
                            region_name=os.environ.get("AWS_REGION", "us-east-1"),
                            config=Config(user_agent_appid="bench-harness"))
    create(dynamodb, TableName=orders, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
           AttributeDefinitions=[string("pk"), string("clienteId"), string("fechaOrden"), string("dia"),
                                 string("actualizadoOrden")],
           GlobalSecondaryIndexes=[index("porCliente", "clienteId", "fechaOrden"),
                                   index("recientes", "dia", "actualizadoOrden")])
    create(dynamodb, TableName=idempotency, KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
           AttributeDefinitions=[string("id")])
    sys.stdout.flush()
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
