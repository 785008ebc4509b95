#include "ptrain/rendezvous/grpc_store.h"

#include <fmt/format.h>

#include "grpc_common.h"
#include "ptrain/core/error.h"

namespace ptrain::rendezvous {

namespace {

void check_value_size(const std::string& key, size_t size) {
  if (size > kMaxValueBytes)
    throw ConfigError(fmt::format("store value for '{}' is {} bytes, over the {} MiB limit", key,
                                  size, kMaxValueBytes >> 20));
}

}  // namespace

GrpcStore::GrpcStore(std::string address, std::string token, Millis rpc_deadline)
    : conn_(std::make_shared<detail::Connection>(std::move(address), std::move(token))),
      rpc_deadline_(rpc_deadline) {}

GrpcStore::GrpcStore(std::shared_ptr<detail::Connection> conn, Millis rpc_deadline)
    : conn_(std::move(conn)), rpc_deadline_(rpc_deadline) {}

GrpcStore::~GrpcStore() = default;

void GrpcStore::set(const std::string& key, const Bytes& value) {
  check_value_size(key, value.size());
  grpc::ClientContext ctx;
  conn_->prepare(ctx, rpc_deadline_);
  proto::SetRequest req;
  req.set_key(key);
  req.set_value(value);
  proto::Empty resp;
  auto st = conn_->stub().Set(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "Set", rpc_deadline_);
}

Bytes GrpcStore::get(const std::string& key, Millis timeout) {
  // The server ends the wait at `timeout` with a message naming the key; the client deadline
  // only guards against a coordinator that stopped answering.
  Millis deadline = timeout + rpc_deadline_;
  grpc::ClientContext ctx;
  conn_->prepare(ctx, deadline);
  proto::GetRequest req;
  req.set_key(key);
  req.set_timeout_ms(timeout.count());
  proto::GetResponse resp;
  auto st = conn_->stub().Get(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "Get", deadline);
  return std::move(*resp.mutable_value());
}

int64_t GrpcStore::add(const std::string& key, int64_t delta) {
  grpc::ClientContext ctx;
  conn_->prepare(ctx, rpc_deadline_);
  proto::AddRequest req;
  req.set_key(key);
  req.set_delta(delta);
  proto::AddResponse resp;
  auto st = conn_->stub().Add(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "Add", rpc_deadline_);
  return resp.value();
}

Bytes GrpcStore::compare_set(const std::string& key, const std::optional<Bytes>& expected,
                             const Bytes& desired) {
  check_value_size(key, desired.size());
  grpc::ClientContext ctx;
  conn_->prepare(ctx, rpc_deadline_);
  proto::CompareSetRequest req;
  req.set_key(key);
  if (expected)
    req.set_expected(*expected);
  else
    req.set_expect_absent(true);
  req.set_desired(desired);
  proto::CompareSetResponse resp;
  auto st = conn_->stub().CompareSet(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "CompareSet", rpc_deadline_);
  return std::move(*resp.mutable_value());
}

void GrpcStore::wait(const std::vector<std::string>& keys, Millis timeout) {
  Millis deadline = timeout + rpc_deadline_;
  grpc::ClientContext ctx;
  conn_->prepare(ctx, deadline);
  proto::WaitRequest req;
  for (const auto& k : keys) req.add_keys(k);
  req.set_timeout_ms(timeout.count());
  proto::Empty resp;
  auto st = conn_->stub().Wait(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "Wait", deadline);
}

std::vector<Bytes> GrpcStore::multi_get(const std::vector<std::string>& keys, Millis timeout) {
  Millis deadline = timeout + rpc_deadline_;
  grpc::ClientContext ctx;
  conn_->prepare(ctx, deadline);
  proto::MultiGetRequest req;
  for (const auto& k : keys) req.add_keys(k);
  req.set_timeout_ms(timeout.count());
  proto::MultiGetResponse resp;
  auto st = conn_->stub().MultiGet(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "MultiGet", deadline);
  if (resp.values_size() != static_cast<int>(keys.size()))
    throw RemoteError(fmt::format("coordinator at {} answered MultiGet of {} keys with {} values",
                                  conn_->address(), keys.size(), resp.values_size()));
  return {resp.values().begin(), resp.values().end()};
}

bool GrpcStore::check(const std::vector<std::string>& keys) {
  grpc::ClientContext ctx;
  conn_->prepare(ctx, rpc_deadline_);
  proto::CheckRequest req;
  for (const auto& k : keys) req.add_keys(k);
  proto::CheckResponse resp;
  auto st = conn_->stub().Check(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "Check", rpc_deadline_);
  return resp.all_present();
}

void GrpcStore::erase(const std::string& key) {
  grpc::ClientContext ctx;
  conn_->prepare(ctx, rpc_deadline_);
  proto::DeleteRequest req;
  req.set_key(key);
  proto::Empty resp;
  auto st = conn_->stub().Delete(&ctx, req, &resp);
  if (!st.ok()) conn_->fail(st, "Delete", rpc_deadline_);
}

}  // namespace ptrain::rendezvous
