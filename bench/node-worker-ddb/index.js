// The peer harness's node-worker (peers/node-worker/index.js: sqs-consumer + @aws-sdk/client-sqs), copied, with the
// work pedidos-worker's process role does per order added: one conditional UpdateItem on the orders table
// (`attribute_not_exists(pk) OR #version < :v`, the same expression, attributes and ReturnValuesOnConditionCheckFailure
// as crates/store/src/dynamo.rs). Benchmark peer only; run it through bench/with_tables.py, which creates the table.
// Env: SQS_QUEUE_URL, ORDERS_TABLE (default bench-orders), AWS_REGION, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID/SECRET.
import { DynamoDBClient, UpdateItemCommand, ConditionalCheckFailedException } from '@aws-sdk/client-dynamodb';
import { SQSClient } from '@aws-sdk/client-sqs';
import { Consumer } from 'sqs-consumer';

const queueUrl = process.env.SQS_QUEUE_URL;
if (!queueUrl) {
  console.error('SQS_QUEUE_URL is required');
  process.exit(1);
}
const table = process.env.ORDERS_TABLE || 'bench-orders';

const sqs = new SQSClient({ region: process.env.AWS_REGION, endpoint: process.env.AWS_ENDPOINT_URL });
const dynamodb = new DynamoDBClient({ region: process.env.AWS_REGION, endpoint: process.env.AWS_ENDPOINT_URL });

const processed = new Set(); // in-memory idempotency: pedidoId#version

const day = (iso) => iso.slice(0, 10);

// One version of an order, applied only when the order is absent or holds a lower version (as pedidos-worker does).
async function apply(event, requestId) {
  const at = new Date().toISOString();
  const entry = { version: { N: String(event.version) }, aplicadaEn: { S: at } };
  if (requestId) entry.requestId = { S: requestId };
  const values = {
    ':v': { N: String(event.version) },
    ':estado': { S: event.version === 1 ? 'CREADO' : 'ACTUALIZADO' },
    ':id': { S: event.pedidoId },
    ':cliente': { S: event.clienteId },
    ':fecha': { S: event.fecha },
    ':orden': { S: `${event.fecha}#${event.pedidoId}` },
    ':dia': { S: day(at) },
    ':actualizado': { S: `${at}#${event.pedidoId}` },
    ':total': { N: String(event.total) },
    ':at': { S: at },
    ':tipo': { S: 'PEDIDO' },
    ':empty': { L: [] },
    ':entry': { L: [{ M: entry }] },
  };
  const set = ['#version = :v', 'estado = :estado', 'pedidoId = :id', 'clienteId = :cliente', 'fecha = :fecha',
    'fechaOrden = :orden', 'dia = :dia', 'actualizadoOrden = :actualizado', '#total = :total', 'actualizadoEn = :at',
    'creadoEn = if_not_exists(creadoEn, :at)', 'tipo = :tipo',
    'versiones = list_append(if_not_exists(versiones, :empty), :entry)'];
  const remove = ['#items'];
  if (requestId) {
    set.push('requestId = :rid');
    values[':rid'] = { S: requestId };
  } else {
    remove.push('requestId');
  }
  try {
    await dynamodb.send(new UpdateItemCommand({
      TableName: table,
      Key: { pk: { S: `PEDIDO#${event.pedidoId}` } },
      UpdateExpression: `SET ${set.join(', ')} REMOVE ${remove.join(', ')}`,
      ConditionExpression: 'attribute_not_exists(pk) OR #version < :v',
      ExpressionAttributeNames: { '#version': 'version', '#total': 'total', '#items': 'items' },
      ExpressionAttributeValues: values,
      ReturnValuesOnConditionCheckFailure: 'ALL_OLD',
    }));
    return 'applied';
  } catch (err) {
    if (err instanceof ConditionalCheckFailedException) return 'duplicate';
    throw err;
  }
}

const consumer = Consumer.create({
  queueUrl,
  sqs,
  batchSize: 10,
  waitTimeSeconds: 20,
  messageAttributeNames: ['All'],
  // Messages returned from the handler are acknowledged (DeleteMessageBatch);
  // the rest become visible again after the visibility timeout.
  handleMessageBatch: async (messages) => {
    const done = [];
    await Promise.all(messages.map(async (message) => {
      let event;
      let requestId;
      try {
        const envelope = JSON.parse(message.Body); // SNS Notification
        event = JSON.parse(envelope.Message);
        requestId = envelope.MessageAttributes?.requestId?.Value;
      } catch (err) {
        console.error(`invalid message ${message.MessageId}: ${err.message}`);
        return;
      }
      const key = `${event.pedidoId}#${event.version}`;
      if (processed.has(key)) {
        console.log(`duplicate ${key} skipped`);
        done.push(message);
        return;
      }
      try {
        const outcome = await apply(event, requestId);
        processed.add(key);
        console.log(`PedidoCreado pedidoId=${event.pedidoId} clienteId=${event.clienteId} total=${event.total} ${outcome}`);
        done.push(message);
      } catch (err) {
        console.error(`store error ${key}: ${err.message}`);
      }
    }));
    return done;
  },
});

consumer.on('error', (err) => console.error(`sqs error: ${err.message}`));
consumer.on('processing_error', (err) => console.error(`processing error: ${err.message}`));
consumer.on('stopped', () => process.exit(0));

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => consumer.stop({ abort: true }));
}

console.log(`listening on ${queueUrl} (orders table ${table})`);
consumer.start();
