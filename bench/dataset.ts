/**
 * The benchmark's database: a shop with customers, products, orders and order lines (foreign keys),
 * jsonb documents (GIN-indexed), reviews in free text and 384-dimension float4[] embeddings of those
 * reviews, with timestamps, numerics and btree indexes. Row counts scale with the wanted on-disk size
 * (pg_database_size, indexes included).
 *
 * Everything is generated inside the server with INSERT ... SELECT generate_series, in batches spread
 * over a few connections (one per core). Free text is made of words drawn from a Zipf-like vocabulary
 * (a few real function words, then syllable words, shorter words more frequent) into sentences of
 * varied length; each text value is a random run of sentences from a pool large enough that a
 * compressor's window rarely sees the same one twice. It compresses like prose (gzip about 0.3), not
 * like md5 noise (incompressible) or a repeated string (nearly free). Embeddings are random floats,
 * which compress badly, as real ones do. Every batch seeds random() from its own number, so the same
 * size gives the same data however the batches land on the connections.
 */
import { Client } from 'pg';
import type { PgConnection } from '../core/config';
import { clientConfig, quoteIdent } from '../core/pg/tools';

/**
 * Rows per MB (MiB) of wanted database size, calibrated on PostgreSQL 15 at 500 MB: documents, reviews
 * and embeddings about a fifth of the size each, orders with their lines a quarter, customers 8%.
 */
const ROWS_PER_MB = {
  customers: 166,
  products: 21,
  orders: 622,
  documents: 139,
  reviews: 532,
  embeddings: 131,
} as const;

const VOCABULARY_SIZE = 8192;
const EMBEDDING_DIMENSIONS = 384;

export interface DatasetPlan {
  readonly sizeMb: number;
  readonly customers: number;
  readonly products: number;
  readonly orders: number;
  /** Order lines are 1-5 per order (3 on average); the exact count is known after loading. */
  readonly documents: number;
  readonly reviews: number;
  readonly embeddings: number;
  /** Sentences in the pool free text is drawn from. */
  readonly sentencePool: number;
}

export function planDataset(sizeMb: number): DatasetPlan {
  if (!Number.isFinite(sizeMb) || sizeMb < 1)
    throw new Error(`dataset size must be at least 1 MB (got ${sizeMb})`);
  // About 7.5 MB of an empty database is catalog; the tables fill the rest.
  const dataMb = Math.max(1, sizeMb - 7.5);
  const rows = (perMb: number) => Math.max(10, Math.round(perMb * dataMb));
  return {
    sizeMb,
    customers: rows(ROWS_PER_MB.customers),
    products: Math.max(200, Math.round(ROWS_PER_MB.products * dataMb)),
    orders: rows(ROWS_PER_MB.orders),
    documents: rows(ROWS_PER_MB.documents),
    reviews: rows(ROWS_PER_MB.reviews),
    embeddings: Math.min(rows(ROWS_PER_MB.reviews), rows(ROWS_PER_MB.embeddings)),
    sentencePool: Math.min(262_144, Math.max(16_384, Math.round(dataMb * 1024))),
  };
}

export interface TableReport {
  readonly table: string;
  readonly rows: number;
  /** pg_total_relation_size: heap, TOAST and indexes. */
  readonly bytes: number;
}

export interface DatasetReport {
  readonly database: string;
  readonly plan: DatasetPlan;
  /** pg_database_size after loading and indexing (before VACUUM). */
  readonly sizeBytes: number;
  readonly tables: readonly TableReport[];
  readonly loadMs: number;
  readonly indexMs: number;
  readonly totalMs: number;
  /** sizeBytes / totalMs, MB/s (MB = 1,000,000 bytes). */
  readonly mbPerSecond: number;
}

export interface GenerateOptions {
  /** Connection to the server (its database is ignored). */
  readonly conn: PgConnection;
  /** Database to create and fill; it must not exist. */
  readonly database: string;
  readonly sizeMb: number;
  /** Parallel connections. @default 2 */
  readonly workers?: number;
  /** Progress lines. */
  readonly log?: (line: string) => void;
}

interface Job {
  readonly label: string;
  readonly sql: string;
  /** Seeds random() before the statement, so batches are reproducible. */
  readonly seed?: number;
}

const FIRST_NAMES = [
  'Anna',
  'Ben',
  'Carla',
  'David',
  'Elena',
  'Farid',
  'Grace',
  'Hugo',
  'Ines',
  'Jonas',
  'Kira',
  'Liam',
  'Maya',
  'Noah',
  'Olga',
  'Pedro',
  'Quinn',
  'Rosa',
  'Sven',
  'Tara',
  'Umar',
  'Vera',
  'Wei',
  'Ximena',
  'Yusuf',
  'Zoe',
  'Amir',
  'Bianca',
  'Chen',
  'Dara',
  'Emil',
  'Fatima',
  'Goran',
  'Hana',
  'Ivan',
  'Julia',
  'Kofi',
  'Lena',
  'Marek',
  'Nina',
];
const LAST_NAMES = [
  'Smith',
  'Müller',
  'García',
  'Rossi',
  'Nowak',
  'Johansson',
  'Dubois',
  'Silva',
  'Kowalski',
  'Jensen',
  'Novak',
  'Horvat',
  'Papadopoulos',
  'Yilmaz',
  'Ivanova',
  'Tanaka',
  'Kim',
  'Nguyen',
  'Singh',
  'Okafor',
  'Mensah',
  'Cohen',
  'Larsen',
  'Fischer',
  'Moreau',
  'Romano',
  'Lopez',
  'Walker',
  'Hughes',
  'Murphy',
  'Byrne',
  'Wagner',
  'Becker',
  'Schulz',
  'Hoffmann',
  'Virtanen',
  'Nieminen',
  'Berg',
  'Lund',
  'Costa',
];
/** The most frequent words are real; the rest of the vocabulary is built from these syllables. */
const COMMON_WORDS = [
  'the',
  'of',
  'and',
  'to',
  'a',
  'in',
  'is',
  'it',
  'you',
  'that',
  'was',
  'for',
  'on',
  'are',
  'with',
  'as',
  'I',
  'his',
  'they',
  'be',
  'at',
  'one',
  'have',
  'this',
  'from',
  'or',
  'had',
  'by',
  'not',
  'but',
  'what',
  'some',
  'we',
  'can',
  'out',
  'other',
  'were',
  'all',
  'there',
  'when',
  'up',
  'use',
  'your',
  'how',
  'said',
  'an',
  'each',
  'she',
  'which',
  'do',
  'their',
  'time',
  'if',
  'will',
  'way',
  'about',
  'many',
  'then',
  'them',
  'would',
  'like',
  'so',
  'these',
  'her',
];
const SYLLABLES = [
  'ka',
  'to',
  'ri',
  'ven',
  'sol',
  'mar',
  'el',
  'an',
  'dor',
  'qui',
  'lu',
  'pe',
  'str',
  'on',
  'ia',
  'ber',
  'ch',
  'ex',
  'pro',
  'ment',
  'tion',
  'al',
  'ly',
  'ing',
  'ed',
  're',
  'co',
  'un',
  'de',
  'pa',
  'vi',
  'sen',
  'ta',
  'mo',
  'ge',
  'ble',
  'ful',
  'ness',
  'ar',
  'ist',
  'ou',
  'ha',
  'si',
  'ne',
  'ter',
  'ver',
  'ca',
  'di',
];

function sqlArray(values: readonly string[]): string {
  return `ARRAY[${values.map((v) => `'${v.replace(/'/g, "''")}'`).join(',')}]`;
}

/** One element of a constant array, picked uniformly. */
function pick(values: readonly string[]): string {
  return `(${sqlArray(values)})[1 + floor(random() * ${values.length})::int]`;
}

function schemaSql(): string {
  return `
CREATE TABLE customers (
  id bigint NOT NULL,
  name text NOT NULL,
  email text NOT NULL,
  country char(2) NOT NULL,
  created_at timestamptz NOT NULL,
  credit_limit numeric(12,2),
  profile jsonb NOT NULL
);
CREATE TABLE products (
  id integer NOT NULL,
  sku text NOT NULL,
  name text NOT NULL,
  category text NOT NULL,
  price numeric(10,2) NOT NULL,
  attributes jsonb NOT NULL,
  description text NOT NULL
);
CREATE TABLE orders (
  id bigint NOT NULL,
  customer_id bigint NOT NULL,
  placed_at timestamptz NOT NULL,
  status text NOT NULL,
  total numeric(14,2) NOT NULL,
  currency char(3) NOT NULL,
  shipping_address text NOT NULL,
  note text
);
CREATE TABLE order_lines (
  order_id bigint NOT NULL,
  line_no smallint NOT NULL,
  product_id integer NOT NULL,
  quantity integer NOT NULL,
  unit_price numeric(10,2) NOT NULL,
  discount numeric(4,3) NOT NULL DEFAULT 0
);
CREATE TABLE documents (
  id bigint NOT NULL,
  customer_id bigint NOT NULL,
  kind text NOT NULL,
  created_at timestamptz NOT NULL,
  body jsonb NOT NULL
);
CREATE TABLE reviews (
  id bigint NOT NULL,
  product_id integer NOT NULL,
  customer_id bigint NOT NULL,
  rating smallint NOT NULL,
  title text NOT NULL,
  body text NOT NULL,
  helpful_votes integer NOT NULL,
  created_at timestamptz NOT NULL
);
CREATE TABLE review_embeddings (
  review_id bigint NOT NULL,
  model text NOT NULL,
  embedding float4[] NOT NULL,
  created_at timestamptz NOT NULL
);
COMMENT ON TABLE review_embeddings IS 'sentence embeddings of reviews (${EMBEDDING_DIMENSIONS} dimensions)';

-- Generation helpers, dropped once the data is in.
CREATE TABLE bench_vocab (id integer PRIMARY KEY, w text NOT NULL);
CREATE TABLE bench_sentences (id integer PRIMARY KEY, s text NOT NULL);
`;
}

/** Vocabulary: rank 1-64 real words, then syllable words getting longer with rank. */
function vocabularySql(): string {
  const syllables = sqlArray(SYLLABLES);
  return `
INSERT INTO bench_vocab SELECT i, w FROM unnest(${sqlArray(COMMON_WORDS)}) WITH ORDINALITY AS c(w, i);
INSERT INTO bench_vocab
SELECT i, (SELECT string_agg((${syllables})[1 + floor(random() * ${SYLLABLES.length})::int], '')
           FROM generate_series(1, CASE WHEN i <= 512 THEN 1 + (i % 2) WHEN i <= 3000 THEN 2 + (i % 2) ELSE 3 + (i % 2) END + 0 * i) k)
FROM generate_series(${COMMON_WORDS.length + 1}, ${VOCABULARY_SIZE}) i;
ANALYZE bench_vocab;
-- A Zipf-like rank: P(rank <= r) ~ ln(r) / ln(N).
CREATE FUNCTION bench_word() RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT w FROM bench_vocab WHERE id = (SELECT floor(exp(random() * ln(${VOCABULARY_SIZE + 1}.0)))::int)
$$;
CREATE FUNCTION bench_words(n integer) RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT string_agg((SELECT w FROM bench_vocab WHERE id = r.k), ' ')
  FROM (SELECT floor(exp(random() * ln(${VOCABULARY_SIZE + 1}.0)) + 0 * i)::int AS k
        FROM generate_series(1, n) i OFFSET 0) r
$$;
`;
}

function textFunctionSql(pool: number): string {
  return `
ANALYZE bench_sentences;
CREATE FUNCTION bench_text(n integer) RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT string_agg((SELECT s FROM bench_sentences WHERE id = r.k), ' ')
  FROM (SELECT floor(random() * ${pool} + 0 * i)::int AS k FROM generate_series(1, n) i OFFSET 0) r
$$;
`;
}

function sentencesSql(lo: number, hi: number): string {
  return `
INSERT INTO bench_sentences
SELECT g, upper(left(x, 1)) || substr(x, 2) || p
FROM (SELECT g, bench_words(3 + floor(random() * 16)::int) AS x, ${pick(['.', '.', '.', '.', '.', '?', '!', '.'])} AS p
      FROM generate_series(${lo}, ${hi}) g OFFSET 0) s`;
}

function customersSql(lo: number, hi: number, plan: DatasetPlan): string {
  return `
INSERT INTO customers
SELECT g, fn || ' ' || ln, lower(fn) || '.' || lower(ln) || g || '@' || dom, country, created, credit, profile
FROM (SELECT g,
        ${pick(FIRST_NAMES)} AS fn,
        ${pick(LAST_NAMES)} AS ln,
        ${pick(['example.com', 'mail.example', 'corp.example', 'shop.example', 'post.example'])} AS dom,
        ${pick(['US', 'US', 'DE', 'FR', 'GB', 'NL', 'SE', 'ES', 'IT', 'PL', 'BR', 'IN', 'JP', 'CA', 'AU'])} AS country,
        timestamptz '2016-01-01 00:00+00' + (g::float8 / ${plan.customers}) * interval '3000 days'
          + random() * interval '1 day' AS created,
        CASE WHEN random() < 0.8 THEN round((500 + random() * 20000)::numeric, 2) END AS credit,
        jsonb_build_object(
          'tier', ${pick(['free', 'free', 'basic', 'pro', 'enterprise'])},
          'newsletter', random() < 0.35,
          'phone', '+' || (1 + floor(random() * 98)::int) || ' ' || lpad(floor(random() * 1e9)::bigint::text, 9, '0'),
          'address', jsonb_build_object(
            'street', initcap(bench_word()) || ' ' || ${pick(['Street', 'Road', 'Avenue', 'Lane', 'Way'])},
            'number', 1 + floor(random() * 400)::int,
            'city', initcap(bench_word()),
            'postcode', lpad(floor(random() * 99999)::int::text, 5, '0')),
          'preferences', jsonb_build_object(
            'language', ${pick(['en', 'en', 'de', 'fr', 'es', 'nl', 'sv', 'pl'])},
            'currency', ${pick(['USD', 'EUR', 'GBP', 'SEK'])},
            'contact', ${pick(['email', 'phone', 'none'])}),
          'interests', to_jsonb(ARRAY[bench_word(), bench_word(), bench_word()]),
          'notes', CASE WHEN random() < 0.2 THEN bench_text(1) END
        ) AS profile
      FROM generate_series(${lo}, ${hi}) g OFFSET 0) s`;
}

function productsSql(lo: number, hi: number): string {
  return `
INSERT INTO products
SELECT g, 'SKU-' || lpad(g::text, 7, '0'), initcap(bench_words(1 + floor(random() * 3)::int)),
  ${pick(['books', 'garden', 'kitchen', 'toys', 'audio', 'office', 'sports', 'tools', 'beauty', 'pets'])},
  round((1 + random() * random() * 500)::numeric, 2),
  jsonb_build_object(
    'color', ${pick(['black', 'white', 'red', 'blue', 'green', 'grey', 'yellow'])},
    'weight_g', 50 + floor(random() * 5000)::int,
    'dimensions_cm', jsonb_build_array(round((random() * 80)::numeric, 1), round((random() * 80)::numeric, 1), round((random() * 80)::numeric, 1)),
    'in_stock', random() < 0.9,
    'supplier', initcap(bench_word()) || ' ' || ${pick(['GmbH', 'Ltd', 'Inc', 'AB', 'SA', 'BV'])}),
  bench_text(1 + floor(random() * 4)::int)
FROM generate_series(${lo}, ${hi}) g`;
}

function ordersSql(lo: number, hi: number, plan: DatasetPlan): string {
  return `
INSERT INTO orders
SELECT g,
  1 + floor(random() * ${plan.customers})::bigint,
  timestamptz '2019-01-01 00:00+00' + (g::float8 / ${plan.orders}) * interval '2500 days' + random() * interval '2 hours',
  ${pick(['delivered', 'delivered', 'delivered', 'delivered', 'shipped', 'paid', 'pending', 'cancelled', 'refunded'])},
  round((5 + random() * random() * 800)::numeric, 2),
  ${pick(['USD', 'USD', 'EUR', 'EUR', 'GBP', 'SEK'])},
  (1 + floor(random() * 400)::int) || ' ' || initcap(bench_word()) || ' ' || ${pick(['Street', 'Road', 'Avenue', 'Lane'])}
    || ', ' || lpad(floor(random() * 99999)::int::text, 5, '0') || ' ' || initcap(bench_word()),
  CASE WHEN random() < 0.3 THEN bench_text(1 + floor(random() * 2)::int) END
FROM generate_series(${lo}, ${hi}) g`;
}

function orderLinesSql(lo: number, hi: number, plan: DatasetPlan): string {
  return `
INSERT INTO order_lines
SELECT o, l, 1 + floor(random() * ${plan.products})::int, 1 + floor(random() * random() * 10)::int,
  round((1 + random() * random() * 300)::numeric, 2),
  CASE WHEN random() < 0.2 THEN round((random() * 0.3)::numeric, 3) ELSE 0 END
FROM generate_series(${lo}, ${hi}) o, generate_series(1, 1 + floor(random() * 5)::int + 0 * o) l`;
}

function documentsSql(lo: number, hi: number, plan: DatasetPlan): string {
  return `
INSERT INTO documents
SELECT g, cust, kind, created, jsonb_build_object(
  'kind', kind,
  'schema', 2,
  'customer_id', cust,
  'created_at', created,
  'subject', bench_words(3 + floor(random() * 6)::int),
  'message', bench_text(1 + floor(random() * 4)::int),
  'priority', ${pick(['low', 'normal', 'normal', 'high', 'urgent'])},
  'status', ${pick(['open', 'pending', 'resolved', 'closed', 'closed'])},
  'channel', ${pick(['email', 'chat', 'phone', 'web'])},
  'items', (SELECT jsonb_agg(jsonb_build_object('sku', 'SKU-' || lpad(p::text, 7, '0'), 'qty', q, 'price', pr))
            FROM (SELECT 1 + floor(random() * ${plan.products})::int AS p, 1 + floor(random() * 4)::int AS q,
                         round((random() * 200)::numeric, 2) AS pr
                  FROM generate_series(1, floor(random() * 5)::int + 0 * g) OFFSET 0) i),
  'tags', to_jsonb(ARRAY[bench_word(), bench_word()]),
  'metrics', jsonb_build_object('response_ms', round((random() * 2000)::numeric, 1),
                                'retries', floor(random() * 3)::int, 'score', round(random()::numeric, 4)),
  'client', jsonb_build_object(
    'ip', '10.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int,
    'agent', ${pick(['Mozilla/5.0 (X11; Linux x86_64)', 'Mozilla/5.0 (Windows NT 10.0; Win64; x64)', 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)', 'okhttp/4.12.0', 'curl/8.5.0'])},
    'app_version', '3.' || floor(random() * 20)::int || '.' || floor(random() * 10)::int))
FROM (SELECT g, 1 + floor(random() * ${plan.customers})::bigint AS cust,
        ${pick(['ticket', 'event', 'event', 'invoice', 'shipment', 'return'])} AS kind,
        timestamptz '2019-01-01 00:00+00' + (g::float8 / ${plan.documents}) * interval '2500 days' AS created
      FROM generate_series(${lo}, ${hi}) g OFFSET 0) s`;
}

function reviewsSql(lo: number, hi: number, plan: DatasetPlan): string {
  return `
INSERT INTO reviews
SELECT g, 1 + floor(random() * ${plan.products})::int, 1 + floor(random() * ${plan.customers})::bigint,
  (ARRAY[1, 2, 3, 4, 4, 5, 5, 5])[1 + floor(random() * 8)::int],
  initcap(bench_words(2 + floor(random() * 5)::int)),
  bench_text(1 + floor(random() * 8)::int),
  floor(random() * random() * 100)::int,
  timestamptz '2019-06-01 00:00+00' + (g::float8 / ${plan.reviews}) * interval '2300 days' + random() * interval '3 hours'
FROM generate_series(${lo}, ${hi}) g`;
}

function embeddingsSql(lo: number, hi: number): string {
  return `
INSERT INTO review_embeddings
SELECT g, 'all-MiniLM-L6-v2',
  ARRAY(SELECT (random() * 0.2 - 0.1)::float4 FROM generate_series(1, ${EMBEDDING_DIMENSIONS}) WHERE g IS NOT NULL),
  timestamptz '2024-01-01 00:00+00' + g * interval '7 seconds'
FROM generate_series(${lo}, ${hi}) g`;
}

/** Splits 1..total into batches of at most `size` rows. */
function batches(total: number, size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let lo = 1; lo <= total; lo += size) out.push([lo, Math.min(total, lo + size - 1)]);
  return out;
}

/** Interleaves several job lists, so the connections work on different tables at once. */
function interleave(lists: readonly Job[][]): Job[] {
  const out: Job[] = [];
  const longest = Math.max(0, ...lists.map((l) => l.length));
  for (let i = 0; i < longest; i++) for (const list of lists) if (list[i]) out.push(list[i]!);
  return out;
}

let seedCounter = 0;
function nextSeed(): number {
  seedCounter++;
  // setseed takes a value in [-1, 1].
  return ((seedCounter * 7919) % 20_000) / 10_000 - 1;
}

function tableJobs(
  label: string,
  total: number,
  size: number,
  sql: (lo: number, hi: number) => string,
): Job[] {
  return batches(total, size).map(([lo, hi]) => ({
    label: `${label} ${lo}-${hi}`,
    sql: sql(lo, hi),
    seed: nextSeed(),
  }));
}

async function connect(conn: PgConnection, database: string): Promise<Client> {
  // The benchmark's own throwaway cluster has no TLS: connect in plain, as sslmode=prefer ends up doing.
  const client = new Client({ ...clientConfig(conn, database, false), connectionTimeoutMillis: 10_000 });
  client.on('error', () => {});
  await client.connect();
  // JIT only slows down these one-off statements; commits need not wait for the disk.
  await client.query(
    "SET jit = off; SET synchronous_commit = off; SET maintenance_work_mem = '256MB'; SET client_min_messages = warning",
  );
  return client;
}

/** Runs jobs over the clients, each client taking the next job when it is free. */
async function runJobs(
  clients: readonly Client[],
  jobs: readonly Job[],
  progress?: (done: number, total: number) => void,
): Promise<void> {
  let next = 0;
  let done = 0;
  let failed: unknown;
  await Promise.all(
    clients.map(async (client) => {
      while (failed === undefined && next < jobs.length) {
        const job = jobs[next++]!;
        try {
          if (job.seed !== undefined) await client.query(`SELECT setseed(${job.seed})`);
          await client.query(job.sql);
        } catch (err) {
          failed ??= new Error(`dataset step "${job.label}" failed: ${(err as Error).message}`);
          return;
        }
        done++;
        progress?.(done, jobs.length);
      }
    }),
  );
  if (failed !== undefined) throw failed;
}

/** Creates the database and fills it; returns what was made and how long it took. */
export async function generateDataset(options: GenerateOptions): Promise<DatasetReport> {
  const plan = planDataset(options.sizeMb);
  const log = options.log ?? (() => {});
  const workers = Math.max(1, options.workers ?? 2);
  const started = Date.now();
  const since = () => `${((Date.now() - started) / 1000).toFixed(1)} s`;
  seedCounter = 0;

  const admin = await connect(options.conn, 'postgres');
  try {
    await admin.query(`CREATE DATABASE ${quoteIdent(options.database)}`);
  } finally {
    await admin.end().catch(() => {});
  }
  const clients: Client[] = [];
  try {
    for (let i = 0; i < workers; i++) clients.push(await connect(options.conn, options.database));
    const first = clients[0]!;
    let lastProgress = 0;
    const progress = (phase: string) => (done: number, total: number) => {
      if (Date.now() - lastProgress < 5_000 && done < total) return;
      lastProgress = Date.now();
      log(`${phase}: ${done}/${total} batches (${since()})`);
    };

    await first.query(schemaSql());
    await first.query('SELECT setseed(0.5)');
    await first.query(vocabularySql());
    await runJobs(
      clients,
      tableJobs('sentences', plan.sentencePool, 20_000, (lo, hi) => sentencesSql(lo - 1, hi - 1)),
      progress('sentence pool'),
    );
    await first.query(textFunctionSql(plan.sentencePool));
    log(`vocabulary and ${plan.sentencePool} sentences ready (${since()})`);

    // The slowest tables first, interleaved, so both connections stay busy to the end.
    const dataJobs = interleave([
      tableJobs('reviews', plan.reviews, 10_000, (lo, hi) => reviewsSql(lo, hi, plan)),
      tableJobs('documents', plan.documents, 6_000, (lo, hi) => documentsSql(lo, hi, plan)),
      tableJobs('review_embeddings', plan.embeddings, 8_000, embeddingsSql),
      tableJobs('orders', plan.orders, 25_000, (lo, hi) => ordersSql(lo, hi, plan)),
      tableJobs('order_lines', plan.orders, 60_000, (lo, hi) => orderLinesSql(lo, hi, plan)),
      tableJobs('customers', plan.customers, 10_000, (lo, hi) => customersSql(lo, hi, plan)),
      tableJobs('products', plan.products, 5_000, productsSql),
    ]);
    await runJobs(clients, dataJobs, progress('tables'));
    const loadMs = Date.now() - started;
    log(`tables loaded (${since()})`);

    await first.query(
      'DROP FUNCTION bench_text(integer), bench_words(integer), bench_word(); DROP TABLE bench_sentences, bench_vocab',
    );
    const indexStarted = Date.now();
    await runJobs(clients, [
      { label: 'order_lines pkey', sql: 'ALTER TABLE order_lines ADD PRIMARY KEY (order_id, line_no)' },
      { label: 'orders pkey', sql: 'ALTER TABLE orders ADD PRIMARY KEY (id)' },
      { label: 'reviews pkey', sql: 'ALTER TABLE reviews ADD PRIMARY KEY (id)' },
      { label: 'documents pkey', sql: 'ALTER TABLE documents ADD PRIMARY KEY (id)' },
      { label: 'customers pkey', sql: 'ALTER TABLE customers ADD PRIMARY KEY (id)' },
      {
        label: 'customers email',
        sql: 'ALTER TABLE customers ADD CONSTRAINT customers_email_key UNIQUE (email)',
      },
      { label: 'embeddings pkey', sql: 'ALTER TABLE review_embeddings ADD PRIMARY KEY (review_id)' },
      { label: 'products pkey', sql: 'ALTER TABLE products ADD PRIMARY KEY (id)' },
      { label: 'products sku', sql: 'ALTER TABLE products ADD CONSTRAINT products_sku_key UNIQUE (sku)' },
    ]);
    await runJobs(clients, [
      { label: 'documents gin', sql: 'CREATE INDEX documents_body_gin ON documents USING gin (body)' },
      {
        label: 'order_lines product',
        sql: 'CREATE INDEX order_lines_product_idx ON order_lines (product_id)',
      },
      { label: 'orders customer', sql: 'CREATE INDEX orders_customer_idx ON orders (customer_id)' },
      { label: 'orders placed_at', sql: 'CREATE INDEX orders_placed_at_idx ON orders (placed_at)' },
      {
        label: 'reviews product',
        sql: 'CREATE INDEX reviews_product_idx ON reviews (product_id, created_at)',
      },
      {
        label: 'documents customer',
        sql: 'CREATE INDEX documents_customer_idx ON documents (customer_id, created_at)',
      },
      {
        label: 'foreign keys',
        sql: `
ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id);
ALTER TABLE order_lines ADD CONSTRAINT order_lines_order_fk FOREIGN KEY (order_id) REFERENCES orders (id) ON DELETE CASCADE;
ALTER TABLE order_lines ADD CONSTRAINT order_lines_product_fk FOREIGN KEY (product_id) REFERENCES products (id);
ALTER TABLE documents ADD CONSTRAINT documents_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id);
ALTER TABLE reviews ADD CONSTRAINT reviews_product_fk FOREIGN KEY (product_id) REFERENCES products (id);
ALTER TABLE reviews ADD CONSTRAINT reviews_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id);
ALTER TABLE review_embeddings ADD CONSTRAINT review_embeddings_review_fk FOREIGN KEY (review_id) REFERENCES reviews (id) ON DELETE CASCADE;`,
      },
    ]);
    const indexMs = Date.now() - indexStarted;
    log(`keys, indexes and foreign keys built (${since()})`);

    const sizes = await first.query<{ table: string; rows: string; bytes: string }>(`
      SELECT c.relname AS table, c.reltuples::bigint::text AS rows, pg_total_relation_size(c.oid)::text AS bytes
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY pg_total_relation_size(c.oid) DESC`);
    const counts = await first.query<Record<string, string>>(
      `SELECT ${sizes.rows.map((r) => `(SELECT count(*) FROM ${quoteIdent(r.table)})::text AS ${quoteIdent(r.table)}`).join(', ')}`,
    );
    const dbSize = await first.query<{ size: string }>(
      'SELECT pg_database_size(current_database())::text AS size',
    );
    const sizeBytes = Number(dbSize.rows[0]!.size);
    const totalMs = Date.now() - started;
    return {
      database: options.database,
      plan,
      sizeBytes,
      tables: sizes.rows.map((r) => ({
        table: r.table,
        rows: Number(counts.rows[0]![r.table] ?? r.rows),
        bytes: Number(r.bytes),
      })),
      loadMs,
      indexMs,
      totalMs,
      mbPerSecond: sizeBytes / 1e6 / (totalMs / 1000),
    };
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
  }
}

/** VACUUM ANALYZE every table, over `workers` connections; returns the database size afterwards. */
export async function vacuumAnalyze(
  conn: PgConnection,
  database: string,
  workers = 2,
): Promise<{ ms: number; sizeBytes: number }> {
  const started = Date.now();
  const clients: Client[] = [];
  try {
    for (let i = 0; i < workers; i++) clients.push(await connect(conn, database));
    const tables = await clients[0]!.query<{ name: string }>(`
      SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY pg_total_relation_size(c.oid) DESC`);
    await runJobs(
      clients,
      tables.rows.map((t) => ({ label: `vacuum ${t.name}`, sql: `VACUUM (ANALYZE) ${quoteIdent(t.name)}` })),
    );
    const size = await clients[0]!.query<{ size: string }>(
      'SELECT pg_database_size(current_database())::text AS size',
    );
    return { ms: Date.now() - started, sizeBytes: Number(size.rows[0]!.size) };
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
  }
}
