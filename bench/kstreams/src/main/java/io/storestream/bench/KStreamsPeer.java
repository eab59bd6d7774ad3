package io.storestream.bench;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import java.io.IOException;
import java.io.PrintStream;
import java.lang.management.ManagementFactory;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Duration;
import java.time.Instant;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.internals.AppInfoParser;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StoreQueryParameters;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.InvalidStateStoreException;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueBytesStoreSupplier;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.QueryableStoreTypes;
import org.apache.kafka.streams.state.ReadOnlyKeyValueStore;
import org.apache.kafka.streams.state.StoreBuilder;
import org.apache.kafka.streams.state.Stores;
import org.apache.kafka.streams.processor.StateRestoreListener;

/**
 * The Kafka Streams peer of storestream's benchmark (bench/kstreams_peer.py runs it).
 *
 * <p>Consumes the bench's purchases (JSON, keyed by customer) from the beginning and keeps per
 * customer the spend in integer cents (the purchase's own {@code price}, else the catalogue's
 * list price; parsed as BigDecimal, never a float) and the coffee count, in two key-value
 * stores ({@code spend}, {@code coffee}), each backed by its changelog topic, as stock Faust's
 * two tables are. Processor API; everything else as Kafka Streams ships it: one stream
 * thread, at_least_once, commit.interval.ms 30 s, statestore.cache.max.bytes 10 MB with
 * caching on (what the DSL's aggregations do) or caching off ({@code --caching off}: the
 * stores' cache disabled and statestore.cache.max.bytes 0).
 *
 * <p>Once {@code --expect} records are processed (or {@code --max-seconds} after the first),
 * it reads both stores back (interactive queries), closes Kafka Streams (which commits the
 * input offsets and flushes the changelogs), reads the group's committed offsets and prints
 * one line {@code BENCH_RESULT {json}} on stdout: the window (wall clock and process CPU at
 * the first and at the expect-th record processed), peak RSS, and a digest of the totals
 * (customers, sums, SHA-256 of the sorted "user,cents,coffee" lines; the full totals go to
 * {@code --totals-out} when given).
 *
 * <p>{@code --mode restore} times a restore instead: stores named by {@code --stores}
 * (String keys, byte[] values, so their changelogs can hold exactly the bytes another
 * system's changelogs hold) over an empty input topic; their changelog topics
 * ({@code <application-id>-<store>-changelog}) are filled beforehand. A
 * {@link StateRestoreListener} records the first restore start, the last restore end and the
 * records restored; once the client is RUNNING it counts each store's keys (interactive
 * queries) and prints one {@code BENCH_RESULT} line.
 *
 * <p>Options: {@code --name value} or the environment variable {@code KSTREAMS_NAME}
 * (upper case, dashes as underscores); see {@link #OPTIONS}.
 */
public final class KStreamsPeer {

    static final String RESULT_PREFIX = "BENCH_RESULT ";
    static final String SPEND = "spend";
    static final String COFFEE = "coffee";

    /** Option name -> default (null: required). */
    static final Map<String, String> OPTIONS = new LinkedHashMap<>();

    static {
        OPTIONS.put("bootstrap", null);
        OPTIONS.put("input", null);
        OPTIONS.put("application-id", null);
        OPTIONS.put("expect", null);
        OPTIONS.put("store", "memory"); // memory | rocksdb
        OPTIONS.put("caching", "shipped"); // shipped | off
        OPTIONS.put("max-seconds", "inf");
        OPTIONS.put("catalogue", ""); // product=price,... (price in currency units)
        OPTIONS.put("stamp-product", "coffee");
        OPTIONS.put("state-dir", "");
        OPTIONS.put("totals-out", "");
        OPTIONS.put("mode", "process"); // process | restore
        OPTIONS.put("stores", "spend,stamps,baskets"); // restore mode: the stores
        OPTIONS.put("restore-timeout-seconds", "900");
    }

    private KStreamsPeer() {}

    /** Wall clock and process CPU at the first and last record of the window. */
    static final class Meter {
        final long expect;
        final double maxSeconds;
        final AtomicLong events = new AtomicLong();
        final CountDownLatch done = new CountDownLatch(1);
        volatile double firstTs;
        volatile double cpuStart;
        volatile double lastTs;
        volatile double cpuEnd;
        volatile long windowEvents;
        volatile boolean complete;

        Meter(long expect, double maxSeconds) {
            this.expect = expect;
            this.maxSeconds = maxSeconds;
        }

        synchronized void start() {
            if (firstTs == 0.0) {
                firstTs = now();
                cpuStart = cpuSeconds();
            }
        }

        void processed() {
            long n = events.incrementAndGet();
            if (n == expect) {
                end(n, true);
            } else if (n < expect && now() - firstTs >= maxSeconds) {
                end(n, false);
            }
        }

        synchronized void end(long n, boolean reachedExpect) {
            if (done.getCount() == 0) {
                return;
            }
            lastTs = now();
            cpuEnd = cpuSeconds();
            windowEvents = n;
            complete = reachedExpect;
            done.countDown();
        }
    }

    /** Spend and coffee count per customer, into the two changelogged stores. */
    static final class Tally implements Processor<String, byte[], Void, Void> {
        private final Meter meter;
        private final Map<String, Long> catalogueCents;
        private final String stamp;
        private final JsonFactory json = new JsonFactory();
        private KeyValueStore<String, Long> spend;
        private KeyValueStore<String, Long> coffee;

        Tally(Meter meter, Map<String, Long> catalogueCents, String stamp) {
            this.meter = meter;
            this.catalogueCents = catalogueCents;
            this.stamp = stamp;
        }

        @Override
        public void init(ProcessorContext<Void, Void> context) {
            spend = context.getStateStore(SPEND);
            coffee = context.getStateStore(COFFEE);
        }

        @Override
        public void process(Record<String, byte[]> record) {
            meter.start();
            String product = null;
            BigDecimal price = null;
            try (JsonParser parser = json.createParser(record.value())) {
                if (parser.nextToken() != JsonToken.START_OBJECT) {
                    throw new IllegalArgumentException("not a JSON object");
                }
                while (parser.nextToken() == JsonToken.FIELD_NAME) {
                    String field = parser.currentName();
                    JsonToken token = parser.nextToken();
                    if ("product_id".equals(field)) {
                        product = parser.getText();
                    } else if ("price".equals(field) && token.isNumeric()) {
                        price = parser.getDecimalValue();
                    } else {
                        parser.skipChildren();
                    }
                }
            } catch (IOException exc) {
                throw new IllegalArgumentException("bad purchase " + record.key(), exc);
            }
            long cents = price != null ? toCents(price)
                                       : catalogueCents.getOrDefault(product, 0L);
            String user = record.key();
            Long before = spend.get(user);
            spend.put(user, before == null ? cents : before + cents);
            if (stamp.equals(product)) {
                Long count = coffee.get(user);
                coffee.put(user, count == null ? 1L : count + 1L);
            }
            meter.processed();
        }
    }

    static long toCents(BigDecimal price) {
        return price.movePointRight(2).longValueExact(); // throws on a fraction of a cent
    }

    static double now() {
        Instant t = Instant.now();
        return t.getEpochSecond() + t.getNano() / 1e9;
    }

    static double cpuSeconds() {
        var os = (com.sun.management.OperatingSystemMXBean)
                ManagementFactory.getOperatingSystemMXBean();
        return os.getProcessCpuTime() / 1e9;
    }

    static double peakRssMb() {
        try {
            for (String line : Files.readAllLines(Path.of("/proc/self/status"))) {
                if (line.startsWith("VmHWM:")) {
                    return Long.parseLong(line.replaceAll("[^0-9]", "")) / 1024.0;
                }
            }
        } catch (IOException | NumberFormatException exc) {
            // not Linux: no figure
        }
        return 0.0;
    }

    static Map<String, String> parseOptions(String[] args) {
        Map<String, String> given = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            String arg = args[i];
            if (!arg.startsWith("--") || i + 1 >= args.length) {
                throw new IllegalArgumentException("expected --option value, got " + arg);
            }
            String name = arg.substring(2);
            if (!OPTIONS.containsKey(name)) {
                throw new IllegalArgumentException("unknown option --" + name
                        + " (known: " + OPTIONS.keySet() + ")");
            }
            given.put(name, args[++i]);
        }
        Map<String, String> out = new HashMap<>();
        for (Map.Entry<String, String> option : OPTIONS.entrySet()) {
            String env = System.getenv("KSTREAMS_"
                    + option.getKey().toUpperCase().replace('-', '_'));
            String value = given.getOrDefault(option.getKey(), env != null ? env
                                                                            : option.getValue());
            if (value == null) {
                throw new IllegalArgumentException("--" + option.getKey() + " is required");
            }
            out.put(option.getKey(), value);
        }
        return out;
    }

    static Map<String, Long> parseCatalogue(String text) {
        Map<String, Long> out = new HashMap<>();
        for (String entry : text.split(",")) {
            if (entry.isBlank()) {
                continue;
            }
            String[] parts = entry.split("=", 2);
            out.put(parts[0].trim(), toCents(new BigDecimal(parts[1].trim())));
        }
        return out;
    }

    static StoreBuilder<KeyValueStore<String, Long>> store(String name, String kind,
                                                           boolean caching) {
        KeyValueBytesStoreSupplier supplier = switch (kind) {
            case "memory" -> Stores.inMemoryKeyValueStore(name);
            case "rocksdb" -> Stores.persistentKeyValueStore(name);
            default -> throw new IllegalArgumentException("--store memory|rocksdb, not " + kind);
        };
        StoreBuilder<KeyValueStore<String, Long>> builder =
                Stores.keyValueStoreBuilder(supplier, Serdes.String(), Serdes.Long());
        // the changelog is on by default (logging enabled); caching is what the option says
        return caching ? builder.withCachingEnabled() : builder.withCachingDisabled();
    }

    /** Both stores read back through interactive queries (the caches included). */
    static TreeMap<String, long[]> readTotals(KafkaStreams streams, Duration timeout)
            throws InterruptedException {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (true) {
            try {
                TreeMap<String, long[]> totals = new TreeMap<>();
                ReadOnlyKeyValueStore<String, Long> spend = streams.store(
                        StoreQueryParameters.fromNameAndType(
                                SPEND, QueryableStoreTypes.keyValueStore()));
                ReadOnlyKeyValueStore<String, Long> coffee = streams.store(
                        StoreQueryParameters.fromNameAndType(
                                COFFEE, QueryableStoreTypes.keyValueStore()));
                try (KeyValueIterator<String, Long> it = spend.all()) {
                    while (it.hasNext()) {
                        KeyValue<String, Long> kv = it.next();
                        totals.computeIfAbsent(kv.key, k -> new long[2])[0] = kv.value;
                    }
                }
                try (KeyValueIterator<String, Long> it = coffee.all()) {
                    while (it.hasNext()) {
                        KeyValue<String, Long> kv = it.next();
                        totals.computeIfAbsent(kv.key, k -> new long[2])[1] = kv.value;
                    }
                }
                return totals;
            } catch (InvalidStateStoreException exc) {
                if (System.nanoTime() > deadline) {
                    throw exc;
                }
                Thread.sleep(100);
            }
        }
    }

    static String sha256(TreeMap<String, long[]> totals) throws NoSuchAlgorithmException {
        MessageDigest digest = MessageDigest.getInstance("SHA-256");
        for (Map.Entry<String, long[]> e : totals.entrySet()) {
            digest.update((e.getKey() + "," + e.getValue()[0] + "," + e.getValue()[1] + "\n")
                    .getBytes(StandardCharsets.UTF_8));
        }
        StringBuilder hex = new StringBuilder();
        for (byte b : digest.digest()) {
            hex.append(String.format("%02x", b));
        }
        return hex.toString();
    }

    static String quote(String s) {
        return "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }

    static void writeTotals(Path path, TreeMap<String, long[]> totals) throws IOException {
        StringBuilder out = new StringBuilder("{");
        for (Map.Entry<String, long[]> e : totals.entrySet()) {
            if (out.length() > 1) {
                out.append(',');
            }
            out.append(quote(e.getKey())).append(":[").append(e.getValue()[0]).append(',')
               .append(e.getValue()[1]).append(']');
        }
        Files.writeString(path, out.append("}\n").toString());
    }

    static long committedOffsets(String bootstrap, String group, String topic) throws Exception {
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(props)) {
            Map<TopicPartition, OffsetAndMetadata> offsets = admin.listConsumerGroupOffsets(group)
                    .partitionsToOffsetAndMetadata().get(30, TimeUnit.SECONDS);
            long sum = 0;
            for (Map.Entry<TopicPartition, OffsetAndMetadata> e : offsets.entrySet()) {
                if (e.getKey().topic().equals(topic) && e.getValue() != null) {
                    sum += e.getValue().offset();
                }
            }
            return sum;
        }
    }

    /** First restore start, last restore end and records restored, over every store. */
    static final class RestoreMeter implements StateRestoreListener {
        final AtomicLong restored = new AtomicLong();
        final AtomicLong partitions = new AtomicLong();
        volatile double firstStart;
        volatile double lastEnd;

        @Override
        public synchronized void onRestoreStart(TopicPartition tp, String store, long start,
                                                long end) {
            if (firstStart == 0.0) {
                firstStart = now();
            }
        }

        @Override
        public void onBatchRestored(TopicPartition tp, String store, long batchEnd,
                                    long records) {
            restored.addAndGet(records);
        }

        @Override
        public synchronized void onRestoreEnd(TopicPartition tp, String store, long total) {
            lastEnd = now();
            partitions.incrementAndGet();
        }
    }

    /** A processor that does nothing: the restore mode's stores only need a task. */
    static final class Idle implements Processor<String, byte[], Void, Void> {
        @Override
        public void process(Record<String, byte[]> record) {}
    }

    static void restore(Map<String, String> opt, Properties props, boolean caching)
            throws Exception {
        String[] names = opt.get("stores").split(",");
        StreamsBuilder builder = new StreamsBuilder();
        for (String name : names) {
            KeyValueBytesStoreSupplier supplier = switch (opt.get("store")) {
                case "memory" -> Stores.inMemoryKeyValueStore(name);
                case "rocksdb" -> Stores.persistentKeyValueStore(name);
                default -> throw new IllegalArgumentException("--store memory|rocksdb");
            };
            StoreBuilder<KeyValueStore<String, byte[]>> store =
                    Stores.keyValueStoreBuilder(supplier, Serdes.String(), Serdes.ByteArray());
            builder.addStateStore(caching ? store.withCachingEnabled()
                                          : store.withCachingDisabled());
        }
        builder.stream(opt.get("input"), Consumed.with(Serdes.String(), Serdes.ByteArray()))
               .process(Idle::new, names);
        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        RestoreMeter meter = new RestoreMeter();
        streams.setGlobalStateRestoreListener(meter);
        double started = now();
        double cpuStarted = cpuSeconds();
        streams.start();
        double deadline = started + Double.parseDouble(opt.get("restore-timeout-seconds"));
        while (streams.state() != KafkaStreams.State.RUNNING) {
            KafkaStreams.State state = streams.state();
            if (state == KafkaStreams.State.ERROR || state == KafkaStreams.State.NOT_RUNNING
                    || now() > deadline) {
                streams.close(Duration.ofSeconds(20));
                throw new IllegalStateException("Kafka Streams " + state + " before RUNNING");
            }
            Thread.sleep(20);
        }
        double running = now();
        double cpuRunning = cpuSeconds();
        Map<String, Object> result = new LinkedHashMap<>();
        long keys = 0;
        for (String name : names) {
            long count = 0;
            ReadOnlyKeyValueStore<String, byte[]> store = streams.store(
                    StoreQueryParameters.fromNameAndType(
                            name, QueryableStoreTypes.keyValueStore()));
            try (KeyValueIterator<String, byte[]> it = store.all()) {
                while (it.hasNext()) {
                    it.next();
                    count++;
                }
            }
            result.put("keys_" + name, count);
            keys += count;
        }
        streams.close(Duration.ofSeconds(60));
        streams.cleanUp();
        result.put("mode", "restore");
        result.put("restored_records", meter.restored.get());
        result.put("restored_partitions", meter.partitions.get());
        result.put("restore_s", meter.lastEnd > 0 ? meter.lastEnd - meter.firstStart : 0.0);
        result.put("start_to_running_s", running - started);
        result.put("cpu_s_to_running", cpuRunning - cpuStarted);
        result.put("keys", keys);
        result.put("peak_rss_mb_self", peakRssMb());
        result.put("kafka_streams", AppInfoParser.getVersion());
        result.put("store", opt.get("store"));
        result.put("caching", opt.get("caching"));
        printResult(result);
    }

    static void printResult(Map<String, Object> result) {
        StringBuilder line = new StringBuilder("{");
        for (Map.Entry<String, Object> e : result.entrySet()) {
            if (line.length() > 1) {
                line.append(", ");
            }
            Object v = e.getValue();
            line.append(quote(e.getKey())).append(": ")
                .append(v instanceof String s ? quote(s) : String.valueOf(v));
        }
        PrintStream out = System.out;
        out.println(RESULT_PREFIX + line.append('}'));
        out.flush();
    }

    public static void main(String[] args) throws Exception {
        Map<String, String> opt = parseOptions(args);
        long expect = Long.parseLong(opt.get("expect"));
        double maxSeconds = Double.parseDouble(opt.get("max-seconds").replace("inf", "Infinity"));
        boolean caching = switch (opt.get("caching")) {
            case "shipped" -> true;
            case "off" -> false;
            default -> throw new IllegalArgumentException("--caching shipped|off");
        };
        Map<String, Long> catalogue = parseCatalogue(opt.get("catalogue"));
        Path stateDir = opt.get("state-dir").isEmpty()
                ? Files.createTempDirectory("bench-kstreams-") : Path.of(opt.get("state-dir"));

        Properties props = new Properties();
        props.put(StreamsConfig.APPLICATION_ID_CONFIG, opt.get("application-id"));
        props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, opt.get("bootstrap"));
        props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
        props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
        if (!caching) {
            props.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0L);
        }
        if ("restore".equals(opt.get("mode"))) {
            restore(opt, props, caching);
            System.exit(0);
        }
        StreamsConfig config = new StreamsConfig(props);

        Meter meter = new Meter(expect, maxSeconds);
        StreamsBuilder builder = new StreamsBuilder();
        builder.addStateStore(store(SPEND, opt.get("store"), caching));
        builder.addStateStore(store(COFFEE, opt.get("store"), caching));
        builder.stream(opt.get("input"), Consumed.with(Serdes.String(), Serdes.ByteArray()))
               .process(() -> new Tally(meter, catalogue, opt.get("stamp-product")),
                        SPEND, COFFEE);

        KafkaStreams streams = new KafkaStreams(builder.build(), props);
        AtomicReference<Throwable> failure = new AtomicReference<>();
        streams.setUncaughtExceptionHandler(exc -> {
            failure.compareAndSet(null, exc);
            meter.done.countDown();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler
                    .StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> streams.close(Duration.ofSeconds(20))));
        double started = now();
        streams.start();
        System.err.printf("kstreams peer: Kafka Streams %s, store %s, caching %s (%d bytes), "
                        + "commit.interval.ms %s, %s, waiting for %,d records on %s%n",
                AppInfoParser.getVersion(), opt.get("store"), opt.get("caching"),
                config.getLong(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG),
                config.getLong(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG),
                config.getString(StreamsConfig.PROCESSING_GUARANTEE_CONFIG), expect,
                opt.get("input"));
        while (!meter.done.await(200, TimeUnit.MILLISECONDS)) {
            if (meter.firstTs != 0.0 && now() - meter.firstTs >= maxSeconds) {
                meter.end(meter.events.get(), false); // input stopped short of expect
            }
            KafkaStreams.State state = streams.state();
            if (state == KafkaStreams.State.ERROR || state == KafkaStreams.State.NOT_RUNNING) {
                failure.compareAndSet(null, new IllegalStateException("Kafka Streams " + state));
                break;
            }
        }
        if (failure.get() != null) {
            failure.get().printStackTrace();
            streams.close(Duration.ofSeconds(20));
            System.exit(1);
        }
        TreeMap<String, long[]> totals = readTotals(streams, Duration.ofSeconds(60));
        double closing = now();
        streams.close(Duration.ofSeconds(60));
        double closed = now();
        long committed = committedOffsets(opt.get("bootstrap"), opt.get("application-id"),
                                          opt.get("input"));
        streams.cleanUp();
        if (!opt.get("totals-out").isEmpty()) {
            writeTotals(Path.of(opt.get("totals-out")), totals);
        }
        long spendCents = 0;
        long coffees = 0;
        for (long[] v : totals.values()) {
            spendCents += v[0];
            coffees += v[1];
        }
        Map<String, Object> result = new LinkedHashMap<>();
        result.put("first_ts", meter.firstTs);
        result.put("last_ts", meter.lastTs);
        result.put("cpu_start", meter.cpuStart);
        result.put("cpu_end", meter.cpuEnd);
        result.put("events", meter.windowEvents);
        result.put("peak_rss_mb_self", peakRssMb());
        result.put("complete", meter.complete);
        result.put("customers", totals.size());
        result.put("spend_cents_total", spendCents);
        result.put("coffee_total", coffees);
        result.put("totals_sha256", sha256(totals));
        result.put("processed_total", meter.events.get());
        result.put("startup_s", meter.firstTs - started);
        result.put("close_s", closed - closing);
        result.put("closed_ts", closed);
        result.put("committed_offsets", committed);
        result.put("kafka_streams", AppInfoParser.getVersion());
        result.put("store", opt.get("store"));
        result.put("caching", opt.get("caching"));
        result.put("cache_max_bytes",
                   config.getLong(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG));
        result.put("commit_interval_ms", config.getLong(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG));
        result.put("processing_guarantee",
                   config.getString(StreamsConfig.PROCESSING_GUARANTEE_CONFIG));
        printResult(result);
        System.exit(0);
    }
}
