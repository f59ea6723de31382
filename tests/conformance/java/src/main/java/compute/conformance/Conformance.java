package compute.conformance;

import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * A producer and reader of the Compute Server's topics written from docs/WIRE_FORMAT.md alone:
 * Apache Avro's single-object encoding, the plain Kafka client with its DEFAULT partitioner.
 *
 * <pre>
 *   produce --bootstrap B --prefix P --schemas DIR --image-url URL [--cases a,b,...]
 *       one JSON line per record written: case, task_id, event_id, key, topic, partition, offset
 *   read --bootstrap B --prefix P --schemas DIR --tasks id,id,...
 *       the status topic up to its end now: one JSON line per status of those tasks, each decoded
 *       with the writer schema found in the schema store topic (never with a local file)
 * </pre>
 * Exit status 0, or 2 on a usage error. tests/conformance/test_java_contract.py drives it.
 */
public final class Conformance {
    private static final String NS = "compute.events.";

    private Conformance() {}

    public static void main(String[] args) throws Exception {
        if (args.length == 0) {
            usage();
        }
        Map<String, String> opt = options(Arrays.copyOfRange(args, 1, args.length));
        switch (args[0]) {
            case "produce" -> produce(opt);
            case "read" -> read(opt);
            default -> usage();
        }
    }

    private static void usage() {
        System.err.println("usage: (produce|read) --bootstrap B --prefix P --schemas DIR [...]");
        System.exit(2);
    }

    private static Map<String, String> options(String[] args) {
        Map<String, String> out = new HashMap<>();
        for (int i = 0; i + 1 < args.length; i += 2) {
            out.put(args[i].replaceFirst("^--", ""), args[i + 1]);
        }
        for (String required : List.of("bootstrap", "prefix", "schemas")) {
            if (!out.containsKey(required)) {
                usage();
            }
        }
        return out;
    }

    /** One Schema.Parser per file: each exported file is self-contained (WIRE_FORMAT.md). */
    private static Schema load(String dir, String fullName) throws IOException {
        return new Schema.Parser().parse(new File(dir, fullName + ".avsc"));
    }

    // ------------------------------------------------------------------------------ produce

    /** How a case differs from a well-formed record. */
    private enum Fault { NONE, NO_HEADERS, WRONG_KEY, WRONG_CE_ID, WRONG_CE_TYPE, WRONG_FINGERPRINT, GARBAGE }

    private record Case(String name, String taskType, String recordName, Map<String, Object> params, Fault fault) {}

    private static List<Case> cases(String imageUrl) {
        Map<String, Object> adjust = new LinkedHashMap<>();
        adjust.put("base_image_url", imageUrl);
        adjust.put("brightness", 0.2);
        adjust.put("contrast", -0.1);
        Map<String, Object> remove = new LinkedHashMap<>();
        remove.put("image_url", imageUrl);
        remove.put("provider_type", "classical");
        Map<String, Object> detail = new LinkedHashMap<>();
        detail.put("base_image_url", imageUrl);
        detail.put("strength", 0.5);
        detail.put("provider_type", "classical");
        Map<String, Object> fix = new LinkedHashMap<>();
        fix.put("base_image_url", imageUrl);
        fix.put("background_image_url", imageUrl);
        fix.put("provider_type", "classical");
        String ia = "IMAGE_ADJUSTER";
        String iaName = NS + "ImageAdjusterTaskSubmitted";
        return List.of(
            new Case("image_adjuster", ia, iaName, adjust, Fault.NONE),
            new Case("background_remove", "BACKGROUND_REMOVE", NS + "BackgroundRemoveTaskSubmitted", remove, Fault.NONE),
            new Case("detail_enhancer", "DETAIL_ENHANCER", NS + "DetailEnhancerTaskSubmitted", detail, Fault.NONE),
            new Case("no_headers", ia, iaName, adjust, Fault.NO_HEADERS),
            new Case("wrong_key", ia, iaName, adjust, Fault.WRONG_KEY),
            new Case("wrong_ce_id", ia, iaName, adjust, Fault.WRONG_CE_ID),
            new Case("wrong_ce_type", ia, iaName, adjust, Fault.WRONG_CE_TYPE),
            new Case("wrong_fingerprint", ia, iaName, adjust, Fault.WRONG_FINGERPRINT),
            new Case("garbage", ia, iaName, adjust, Fault.GARBAGE),
            new Case("after_faults", ia, iaName, adjust, Fault.NONE),
            new Case("leased", "BACKGROUND_FIX", NS + "BackgroundFixTaskSubmitted", fix, Fault.NONE));
    }

    private static void produce(Map<String, String> opt) throws Exception {
        Set<String> wanted = opt.containsKey("cases") ? new HashSet<>(Arrays.asList(opt.get("cases").split(","))) : null;
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, opt.get("bootstrap"));
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        // No partitioner.class: the client's default (murmur2 of the key) is the contract.
        try (KafkaProducer<byte[], byte[]> producer =
                 new KafkaProducer<>(props, new ByteArraySerializer(), new ByteArraySerializer())) {
            for (Case c : cases(opt.get("image-url"))) {
                if (wanted == null || wanted.contains(c.name())) {
                    send(producer, opt, c);
                }
            }
        }
    }

    private static void send(KafkaProducer<byte[], byte[]> producer, Map<String, String> opt, Case c) throws Exception {
        Schema schema = load(opt.get("schemas"), c.recordName());
        Schema envelopeSchema = schema.getField("envelope").schema();
        Schema paramsSchema = schema.getField("params").schema();
        String taskId = UUID.randomUUID().toString();
        String eventId = UUID.randomUUID().toString();
        Instant now = Instant.now();
        GenericRecord envelope = new GenericRecordBuilder(envelopeSchema)
            .set("event_id", eventId)
            .set("task_id", taskId)
            .set("task_type", new GenericData.EnumSymbol(envelopeSchema.getField("task_type").schema(), c.taskType()))
            .set("attempt", 1)
            .set("occurred_at", now.getEpochSecond() * 1_000_000L + now.getNano() / 1_000)
            .set("source", "java-conformance")
            .build();
        GenericRecordBuilder params = new GenericRecordBuilder(paramsSchema);
        c.params().forEach(params::set);
        GenericRecord task = new GenericRecordBuilder(schema)
            .set("envelope", envelope)
            .set("params", params.build())
            .build();
        ByteBuffer encoded = new BinaryMessageEncoder<GenericRecord>(GenericData.get(), schema).encode(task);
        byte[] value = new byte[encoded.remaining()];  // the buffer's array may be longer
        encoded.get(value);
        String key = taskId;
        String ceId = eventId;
        String ceType = c.recordName();
        String traceId = UUID.randomUUID().toString().replace("-", "");
        String traceparent = "00-" + traceId + "-" + traceId.substring(0, 16) + "-01";
        switch (c.fault()) {
            case WRONG_KEY -> key = UUID.randomUUID().toString();
            case WRONG_CE_ID -> ceId = UUID.randomUUID().toString();
            case WRONG_CE_TYPE -> ceType = NS + "GenerationTaskSubmitted";
            case WRONG_FINGERPRINT -> value[2] ^= (byte) 0xFF;  // bytes 2..9: the fingerprint
            case GARBAGE -> value = "this is not an Avro record".getBytes(StandardCharsets.UTF_8);
            default -> { }
        }
        String topic = opt.get("prefix") + ".tasks." + c.taskType().toLowerCase();
        ProducerRecord<byte[], byte[]> record = new ProducerRecord<>(topic, key.getBytes(StandardCharsets.UTF_8), value);
        if (c.fault() != Fault.NO_HEADERS) {
            record.headers()
                .add(new RecordHeader("ce_specversion", bytes("1.0")))
                .add(new RecordHeader("ce_id", bytes(ceId)))
                .add(new RecordHeader("ce_source", bytes("/compute/java-conformance")))
                .add(new RecordHeader("ce_type", bytes(ceType)))
                .add(new RecordHeader("traceparent", bytes(traceparent)));
        }
        RecordMetadata meta = producer.send(record).get();
        Map<String, Object> line = new LinkedHashMap<>();
        line.put("kind", "produced");
        line.put("case", c.name());
        line.put("task_type", c.taskType());
        line.put("task_id", taskId);
        line.put("event_id", eventId);
        line.put("key", key);
        line.put("trace_id", c.fault() == Fault.NO_HEADERS ? null : traceId);
        line.put("topic", topic);
        line.put("partition", meta.partition());
        line.put("offset", meta.offset());
        line.put("fingerprint", hex(Arrays.copyOfRange(value, 2, Math.min(10, value.length))));
        line.put("java_fingerprint", hex(fingerprint(schema)));
        System.out.println(json(line));
    }

    // --------------------------------------------------------------------------------- read

    private static void read(Map<String, String> opt) throws Exception {
        Set<String> tasks = new HashSet<>(Arrays.asList(opt.getOrDefault("tasks", "").split(",")));
        String prefix = opt.get("prefix");
        Map<String, String> store = new HashMap<>();
        for (ConsumerRecord<byte[], byte[]> r : readAll(opt.get("bootstrap"), prefix + ".schemas")) {
            if (r.value() != null) {
                store.put(new String(r.key(), StandardCharsets.UTF_8), new String(r.value(), StandardCharsets.UTF_8));
            }
        }
        Map<String, BinaryMessageDecoder<GenericRecord>> decoders = new HashMap<>();
        for (ConsumerRecord<byte[], byte[]> r : readAll(opt.get("bootstrap"), prefix + ".tasks.status")) {
            String key = r.key() == null ? null : new String(r.key(), StandardCharsets.UTF_8);
            if (key == null || !tasks.contains(key)) {
                continue;
            }
            byte[] v = r.value();
            Map<String, Object> line = new LinkedHashMap<>();
            line.put("kind", "status");
            line.put("key", key);
            line.put("partition", r.partition());
            boolean singleObject = v.length > 10 && (v[0] & 0xFF) == 0xC3 && v[1] == 0x01;
            String fp = singleObject ? hex(Arrays.copyOfRange(v, 2, 10)) : null;
            String writer = fp == null ? null : store.get(fp);  // the store key: the framed bytes' hex
            line.put("fingerprint", fp);
            line.put("in_store", writer != null);
            Map<String, String> headers = new HashMap<>();
            for (Header h : r.headers()) {
                headers.put(h.key(), h.value() == null ? null : new String(h.value(), StandardCharsets.UTF_8));
            }
            line.put("ce_type", headers.get("ce_type"));
            String tp = headers.get("traceparent");
            line.put("trace_id", tp != null && tp.length() == 55 ? tp.substring(3, 35) : null);
            if (writer != null) {
                // A decoder built from the store's schema alone: this reader has no local copy.
                BinaryMessageDecoder<GenericRecord> decoder = decoders.computeIfAbsent(writer,
                    text -> new BinaryMessageDecoder<>(GenericData.get(), new Schema.Parser().parse(text)));
                GenericRecord status = decoder.decode(v);
                GenericRecord env = (GenericRecord) status.get("envelope");
                line.put("task_id", str(env.get("task_id")));
                line.put("event_id", str(env.get("event_id")));
                line.put("ce_id_matches", str(env.get("event_id")).equals(headers.get("ce_id")));
                line.put("attempt", env.get("attempt"));
                line.put("status", str(status.get("status")));
                line.put("worker_id", str(status.get("worker_id")));
                GenericRecord error = (GenericRecord) status.get("error");
                line.put("error_code", error == null ? null : str(error.get("code")));
                line.put("error_message", error == null ? null : str(error.get("message")));
                line.put("retryable", error == null ? null : error.get("retryable"));
            }
            System.out.println(json(line));
        }
    }

    /** Every record a topic holds now (up to its end offsets when this starts). */
    private static List<ConsumerRecord<byte[], byte[]>> readAll(String bootstrap, String topic) {
        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        List<ConsumerRecord<byte[], byte[]>> out = new ArrayList<>();
        try (KafkaConsumer<byte[], byte[]> consumer =
                 new KafkaConsumer<>(props, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> parts = new ArrayList<>();
            for (PartitionInfo p : consumer.partitionsFor(topic, Duration.ofSeconds(30))) {
                parts.add(new TopicPartition(topic, p.partition()));
            }
            consumer.assign(parts);
            consumer.seekToBeginning(parts);
            Map<TopicPartition, Long> ends = new HashMap<>(consumer.endOffsets(parts));
            long deadline = System.currentTimeMillis() + 60_000;
            while (ends.entrySet().stream().anyMatch(e -> consumer.position(e.getKey()) < e.getValue())) {
                if (System.currentTimeMillis() > deadline) {
                    throw new IllegalStateException(topic + ": not read to its end within 60 s");
                }
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(200))) {
                    if (r.offset() < ends.get(new TopicPartition(topic, r.partition()))) {
                        out.add(r);
                    }
                }
            }
        }
        return out;
    }

    // -------------------------------------------------------------------------------- helpers

    /** The single-object fingerprint: CRC-64-AVRO of the Parsing Canonical Form, little-endian. */
    private static byte[] fingerprint(Schema schema) {
        long fp = SchemaNormalization.parsingFingerprint64(schema);
        return ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(fp).array();
    }

    private static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    private static String str(Object o) {
        return o == null ? null : o.toString();
    }

    private static String hex(byte[] b) {
        StringBuilder sb = new StringBuilder();
        for (byte x : b) {
            sb.append(String.format("%02x", x & 0xFF));
        }
        return sb.toString();
    }

    private static String json(Map<String, Object> map) {
        StringBuilder sb = new StringBuilder("{");
        for (Map.Entry<String, Object> e : map.entrySet()) {
            if (sb.length() > 1) {
                sb.append(',');
            }
            sb.append(quote(e.getKey())).append(':');
            Object v = e.getValue();
            if (v == null) {
                sb.append("null");
            } else if (v instanceof Number || v instanceof Boolean) {
                sb.append(v);
            } else {
                sb.append(quote(v.toString()));
            }
        }
        return sb.append('}').toString();
    }

    private static String quote(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            switch (ch) {
                case '"' -> sb.append("\\\"");
                case '\\' -> sb.append("\\\\");
                case '\n' -> sb.append("\\n");
                case '\r' -> sb.append("\\r");
                case '\t' -> sb.append("\\t");
                default -> {
                    if (ch < 0x20) {
                        sb.append(String.format("\\u%04x", (int) ch));
                    } else {
                        sb.append(ch);
                    }
                }
            }
        }
        return sb.append('"').toString();
    }
}
