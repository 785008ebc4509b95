// Store semantics, checked on MemoryStore, on the coordinator's in-process store and on GrpcStore
// against a real coordinator on 127.0.0.1.
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <thread>

#include "ptrain.grpc.pb.h"
#include "ptrain/core/error.h"
#include "ptrain/rendezvous/client.h"
#include "ptrain/rendezvous/grpc_store.h"
#include "ptrain/rendezvous/memory_store.h"
#include "test_util.h"

namespace ptrain::rendezvous {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

enum class Kind { Memory, CoordinatorLocal, Grpc };

class StoreTest : public ::testing::TestWithParam<Kind> {
 protected:
  void SetUp() override {
    switch (GetParam()) {
      case Kind::Memory:
        store_ = std::make_shared<MemoryStore>();
        break;
      case Kind::CoordinatorLocal:
        coordinator_ = testing::start_coordinator({});
        local_ = &coordinator_->store();
        break;
      case Kind::Grpc: {
        CoordinatorOptions opt;
        opt.token = make_token();
        coordinator_ = testing::start_coordinator(opt);
        store_ = std::make_shared<GrpcStore>(coordinator_->address(), opt.token);
        break;
      }
    }
  }
  Store& store() { return local_ ? *local_ : *store_; }

  std::unique_ptr<Coordinator> coordinator_;
  std::shared_ptr<Store> store_;
  Store* local_ = nullptr;
};

TEST_P(StoreTest, SetThenGetReturnsTheValue) {
  store().set("k", std::string("a\0b", 3));
  EXPECT_EQ(store().get("k", Millis(1000)), std::string("a\0b", 3));
}

TEST_P(StoreTest, AddCountsFromZeroAndReturnsTheNewValue) {
  EXPECT_EQ(store().add("n", 5), 5);
  EXPECT_EQ(store().add("n", -2), 3);
  EXPECT_EQ(store().get("n", Millis(1000)), "3");
}

TEST_P(StoreTest, CompareSetSwapsOnlyWhenExpectedMatches) {
  EXPECT_EQ(store().compare_set("c", std::nullopt, "first"), "first");
  EXPECT_EQ(store().compare_set("c", std::nullopt, "second"), "first");
  EXPECT_EQ(store().compare_set("c", std::string("wrong"), "third"), "first");
  EXPECT_EQ(store().compare_set("c", std::string("first"), "fourth"), "fourth");
}

TEST_P(StoreTest, WaitTimeoutNamesTheMissingKeys) {
  store().set("present", "1");
  try {
    store().wait({"present", "absent-a", "absent-b"}, Millis(100));
    FAIL() << "wait returned";
  } catch (const TimeoutError& e) {
    EXPECT_THAT(e.what(), HasSubstr("'absent-a'"));
    EXPECT_THAT(e.what(), HasSubstr("'absent-b'"));
    EXPECT_THAT(e.what(), Not(HasSubstr("'present'")));
  }
}

TEST_P(StoreTest, GetWaitsForAKeySetLater) {
  std::thread setter([&] {
    std::this_thread::sleep_for(Millis(50));  // the get must already be waiting
    store().set("late", "v");
  });
  EXPECT_EQ(store().get("late", Millis(5000)), "v");
  setter.join();
}

TEST_P(StoreTest, MultiGetReturnsValuesInKeyOrder) {
  store().set("b", "2");
  store().set("a", "1");
  EXPECT_EQ(store().multi_get({"a", "b", "a"}, Millis(1000)), (std::vector<Bytes>{"1", "2", "1"}));
}

TEST_P(StoreTest, CheckDoesNotWaitAndEraseRemoves) {
  store().set("x", "1");
  EXPECT_TRUE(store().check({"x"}));
  EXPECT_FALSE(store().check({"x", "y"}));
  store().erase("x");
  EXPECT_FALSE(store().check({"x"}));
}

TEST_P(StoreTest, AddOnANonIntegerIsRefused) {
  store().set("s", "text");
  EXPECT_THROW(store().add("s", 1), ConfigError);
}

TEST_P(StoreTest, OverSizeValueIsRefused) {
  std::string big(kMaxValueBytes + 1, 'x');
  try {
    store().set("big", big);
    FAIL() << "set accepted " << big.size() << " bytes";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("64 MiB"));
  }
}

INSTANTIATE_TEST_SUITE_P(Stores, StoreTest,
                         ::testing::Values(Kind::Memory, Kind::CoordinatorLocal, Kind::Grpc),
                         [](const auto& info) {
                           switch (info.param) {
                             case Kind::Memory:
                               return std::string("Memory");
                             case Kind::CoordinatorLocal:
                               return std::string("CoordinatorLocal");
                             case Kind::Grpc:
                               return std::string("Grpc");
                           }
                           return std::string("?");
                         });

TEST(GrpcStoreTest, ServerRefusesOverSizeValueWithInvalidArgument) {
  // Bypasses the client-side check to show that the coordinator refuses it too.
  CoordinatorOptions opt;
  opt.token = make_token();
  auto coordinator = testing::start_coordinator(opt);
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(static_cast<int>(kMaxValueBytes + (2 << 20)));
  auto channel =
      grpc::CreateCustomChannel(coordinator->address(), grpc::InsecureChannelCredentials(), args);
  auto stub = proto::Coordinator::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.AddMetadata(kTokenMetadataKey, opt.token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  proto::SetRequest req;
  req.set_key("big");
  req.set_value(std::string(kMaxValueBytes + 1, 'x'));
  proto::Empty resp;
  auto st = stub->Set(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("over the 64 MiB limit"));
  EXPECT_FALSE(coordinator->store().check({"big"}));
}

TEST(GrpcStoreTest, ServerRefusesAMessageOverItsLimitBeforeReadingIt) {
  // The coordinator's receive limit (the largest value plus 1 MiB) holds for an authenticated
  // client too, so no call can make the server buffer more than that.
  CoordinatorOptions opt;
  opt.token = make_token();
  auto coordinator = testing::start_coordinator(opt);
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(static_cast<int>(kMaxValueBytes + (8 << 20)));
  auto channel =
      grpc::CreateCustomChannel(coordinator->address(), grpc::InsecureChannelCredentials(), args);
  auto stub = proto::Coordinator::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.AddMetadata(kTokenMetadataKey, opt.token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  proto::SetRequest req;
  req.set_key("huge");
  req.set_value(std::string(kMaxValueBytes + (4 << 20), 'x'));
  proto::Empty resp;
  auto st = stub->Set(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  EXPECT_FALSE(coordinator->store().check({"huge"}));
}

TEST(GrpcStoreTest, WrongTokenIsRefusedAndWarnedWithoutTheToken) {
  std::mutex mu;
  std::vector<std::string> warnings;
  CoordinatorOptions opt;
  opt.token = make_token();
  CoordinatorEvents ev;
  ev.on_warning = [&](const std::string& w) {
    std::lock_guard<std::mutex> lock(mu);
    warnings.push_back(w);
  };
  auto coordinator = testing::start_coordinator(opt, ev);
  std::string wrong = make_token();
  GrpcStore store(coordinator->address(), wrong);
  try {
    store.set("k", "v");
    FAIL() << "set with a wrong token succeeded";
  } catch (const RemoteError& e) {
    EXPECT_THAT(e.what(), HasSubstr("token"));
    EXPECT_THAT(e.message(), Not(HasSubstr(wrong)));
  }
  EXPECT_FALSE(coordinator->store().check({"k"}));
  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], HasSubstr("wrong job token"));
  EXPECT_THAT(warnings[0], Not(HasSubstr(wrong)));
  EXPECT_THAT(warnings[0], Not(HasSubstr(opt.token)));
}

TEST(GrpcStoreTest, BlockingGetEndsAtItsTimeoutWithTimeoutError) {
  // A timeout shorter than the server wait: the server still answers first, naming the key.
  CoordinatorOptions opt;
  opt.token = make_token();
  auto coordinator = testing::start_coordinator(opt);
  GrpcStore store(coordinator->address(), opt.token, Millis(200));
  auto t0 = Clock::now();
  EXPECT_THROW(store.get("never", Millis(100)), TimeoutError);
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2));
}

TEST(TokenTest, TokensAre64HexCharactersAndDiffer) {
  std::string a = make_token(), b = make_token();
  EXPECT_EQ(a.size(), 64u);
  EXPECT_EQ(a.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_NE(a, b);
}

TEST(TokenTest, TokenEqualComparesWholeStrings) {
  EXPECT_TRUE(token_equal("abc", "abc"));
  EXPECT_FALSE(token_equal("abc", "abd"));
  EXPECT_FALSE(token_equal("abc", "abcd"));
  EXPECT_FALSE(token_equal("", "a"));
  EXPECT_TRUE(token_equal("", ""));
}

}  // namespace
}  // namespace ptrain::rendezvous
