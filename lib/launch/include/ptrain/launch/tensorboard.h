// TensorBoard output of a run: RUN_DIR/tb/events.out.tfevents.<time>.<host>, the TFRecord
// framing of TensorFlow's event files (u64 length, masked CRC-32C of the length, an Event
// protobuf, masked CRC-32C of the data), first a `file_version: "brain.Event:2"` event, then one
// event per logged step with every number of its metrics line as a scalar (loss, eval metrics,
// lr, grad norm, throughput, MFU, memory, communication figures, bubble, ...).
#pragma once

#include <cstdint>
#include <string>

namespace ptrain::launch {

class EventWriter {
 public:
  // Creates `dir` and the events file in it (named with `unix_s` and the host).
  EventWriter(const std::string& dir, double unix_s);
  ~EventWriter();
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  // One metrics object ({"step": 3, "loss": 2.5, ...}): its numbers (other than step and
  // total_steps) become scalars of one event at that step. Lines without a step are skipped.
  void add_metrics(const std::string& json, double unix_s);
  // A scalar event of its own.
  void add_scalar(const std::string& tag, double value, int64_t step, double unix_s);
  const std::string& path() const { return path_; }

 private:
  // Appends one record with a single write, so a crash never leaves half a record behind.
  void write_record(const std::string& data);
  std::string path_;
  int fd_ = -1;
};

// The record framing alone (exposed for tests): the bytes of one TFRecord holding `data`.
std::string tfrecord(const std::string& data);

}  // namespace ptrain::launch
