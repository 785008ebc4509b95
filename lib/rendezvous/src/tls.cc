#include "ptrain/rendezvous/tls.h"

#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>

#include "connection_gate.h"
#include "ptrain/core/error.h"
#include "ptrain/core/private_file.h"
#include "ptrain/rendezvous/token.h"

namespace ptrain::rendezvous {

namespace {

// The oldest OpenSSL error, for the one line we throw.
std::string ssl_error() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  return buf;
}

#define PTRAIN_SSL(expr)                                                                        \
  do {                                                                                          \
    if (!(expr))                                                                                \
      throw IoError(                                                                            \
          fmt::format("{}:{}: OpenSSL {} failed: {}", __FILE__, __LINE__, #expr, ssl_error())); \
  } while (0)

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* p) const { X509_free(p); }
};
struct BioFree {
  void operator()(BIO* p) const { BIO_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Cert = std::unique_ptr<X509, X509Free>;

Pkey make_key() {
  Pkey key(EVP_EC_gen("P-256"));
  PTRAIN_SSL(key);
  return key;
}

void add_ext(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  PTRAIN_SSL(ext);
  int ok = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  PTRAIN_SSL(ok);
}

// A certificate for `key` named `cn`, not yet signed.
Cert make_cert(EVP_PKEY* key, const char* cn, std::chrono::seconds validity) {
  Cert cert(X509_new());
  PTRAIN_SSL(cert);
  PTRAIN_SSL(X509_set_version(cert.get(), 2));
  unsigned char serial[16];
  PTRAIN_SSL(RAND_bytes(serial, sizeof serial) == 1);
  serial[0] &= 0x7f;  // positive
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  PTRAIN_SSL(bn);
  ASN1_INTEGER* sn = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  PTRAIN_SSL(sn);
  PTRAIN_SSL(X509_gmtime_adj(X509_getm_notBefore(cert.get()), -300));
  PTRAIN_SSL(X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(validity.count())));
  PTRAIN_SSL(X509_set_pubkey(cert.get(), key));
  X509_NAME* name = X509_get_subject_name(cert.get());
  PTRAIN_SSL(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                        reinterpret_cast<const unsigned char*>(cn), -1, -1, 0));
  return cert;
}

std::string pem_of(const std::function<int(BIO*)>& write) {
  std::unique_ptr<BIO, BioFree> bio(BIO_new(BIO_s_mem()));
  PTRAIN_SSL(bio);
  PTRAIN_SSL(write(bio.get()) == 1);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

// Process-wide identity: unset until set_process_tls() or the first use (then $PTRAIN_TLS_DIR).
struct ProcessTls {
  std::mutex mu;
  bool decided = false;
  std::optional<TlsIdentity> identity;
};
ProcessTls& process_state() {
  static ProcessTls s;
  return s;
}

std::optional<TlsIdentity> current_tls() {
  auto& s = process_state();
  std::lock_guard lock(s.mu);
  if (!s.decided) {
    s.decided = true;
    const char* dir = std::getenv(kTlsDirEnv);
    if (dir && *dir) s.identity = read_tls_files(dir);
  }
  return s.identity;
}

// Refuses a call whose headers lack the job token, before its body is read.
class TokenCheck : public grpc::AuthMetadataProcessor {
 public:
  TokenCheck(std::string token, std::function<void(const char*)> on_reject)
      : token_(std::move(token)), on_reject_(std::move(on_reject)) {}
  bool IsBlocking() const override { return false; }  // a comparison: run it inline
  grpc::Status Process(const InputMetadata& md, grpc::AuthContext*, OutputMetadata*,
                       OutputMetadata*) override {
    auto it = md.find(kTokenMetadataKey);
    const char* why = nullptr;
    if (it == md.end())
      why = "missing";
    else if (!token_equal(std::string_view(it->second.data(), it->second.size()), token_))
      why = "wrong";
    if (!why) return grpc::Status::OK;
    if (on_reject_) on_reject_(why);
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong or missing job token");
  }

 private:
  std::string token_;
  std::function<void(const char*)> on_reject_;
};

}  // namespace

TlsIdentity make_job_tls(std::chrono::seconds validity) {
  Pkey ca_key = make_key();
  Cert ca = make_cert(ca_key.get(), "ptrain job CA", validity);
  PTRAIN_SSL(X509_set_issuer_name(ca.get(), X509_get_subject_name(ca.get())));
  add_ext(ca.get(), ca.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
  add_ext(ca.get(), ca.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
  add_ext(ca.get(), ca.get(), NID_subject_key_identifier, "hash");
  PTRAIN_SSL(X509_sign(ca.get(), ca_key.get(), EVP_sha256()) > 0);

  Pkey key = make_key();
  Cert cert = make_cert(key.get(), kTlsServerName, validity);
  PTRAIN_SSL(X509_set_issuer_name(cert.get(), X509_get_subject_name(ca.get())));
  add_ext(cert.get(), ca.get(), NID_basic_constraints, "critical,CA:FALSE");
  add_ext(cert.get(), ca.get(), NID_key_usage, "critical,digitalSignature,keyAgreement");
  add_ext(cert.get(), ca.get(), NID_ext_key_usage, "serverAuth,clientAuth");
  add_ext(cert.get(), ca.get(), NID_subject_alt_name,
          fmt::format("DNS:{}", kTlsServerName).c_str());
  add_ext(cert.get(), ca.get(), NID_authority_key_identifier, "keyid:always");
  PTRAIN_SSL(X509_sign(cert.get(), ca_key.get(), EVP_sha256()) > 0);

  TlsIdentity id;
  id.ca_pem = pem_of([&](BIO* b) { return PEM_write_bio_X509(b, ca.get()); });
  id.cert_pem = pem_of([&](BIO* b) { return PEM_write_bio_X509(b, cert.get()); });
  id.key_pem = pem_of([&](BIO* b) {
    return PEM_write_bio_PrivateKey(b, key.get(), nullptr, nullptr, 0, nullptr, nullptr);
  });
  return id;
}

void write_tls_files(const std::string& dir, const TlsIdentity& id) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw IoError(fmt::format("cannot create {}: {}", dir, std::strerror(errno)));
  ::chmod(dir.c_str(), 0700);
  for (auto [name, text] : {std::pair{"ca.pem", &id.ca_pem}, std::pair{"cert.pem", &id.cert_pem},
                            std::pair{"key.pem", &id.key_pem}})
    write_private_file(dir + "/" + name, *text);
}

TlsIdentity read_tls_files(const std::string& dir) {
  auto read = [&](const char* name) {
    std::string path = dir + "/" + name;
    std::ifstream in(path);
    if (!in)
      throw IoError(fmt::format("cannot read the job certificate file {}", path),
                    fmt::format("{} must name the folder the launcher wrote", kTlsDirEnv));
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  TlsIdentity id;
  id.ca_pem = read("ca.pem");
  id.cert_pem = read("cert.pem");
  id.key_pem = read("key.pem");
  return id;
}

void set_process_tls(std::optional<TlsIdentity> identity) {
  auto& s = process_state();
  std::lock_guard lock(s.mu);
  s.decided = true;
  s.identity = std::move(identity);
}

bool process_tls_enabled() {
  return current_tls().has_value();
}

bool is_loopback_host(const std::string& host) {
  std::string h = host;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  return h == "localhost" || h == "::1" || h.rfind("127.", 0) == 0 || h == "ip6-localhost";
}

bool tls_wanted(const std::string& mode, const std::vector<std::string>& hosts) {
  if (mode == "on") return true;
  if (mode == "off") return false;
  for (const auto& h : hosts)
    if (!is_loopback_host(h)) return true;
  return false;
}

// The host part of "host:port" / "[v6]:port".
std::string host_of(const std::string& address) {
  size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

// gRPC's local TCP credentials accept exactly 127.0.0.1 and ::1 (a connection to another
// 127.0.0.0/8 address, such as a test host 127.0.0.2, is closed): only those use them.
static bool local_tcp_host(const std::string& host) {
  std::string h = host;
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  return h == "127.0.0.1" || h == "::1" || h == "localhost";
}

bool is_unix_address(const std::string& address) {
  return address.rfind("unix:", 0) == 0;
}

std::shared_ptr<grpc::ChannelCredentials> channel_credentials(grpc::ChannelArguments& args,
                                                              const std::string& target) {
  // A node-local unix socket (a node relay's, in the private run folder): gRPC's local
  // credentials, plaintext but "secure" enough for the server to check the token on the headers.
  if (is_unix_address(target)) return grpc::experimental::LocalCredentials(UDS);
  auto id = current_tls();
  // Plaintext on loopback goes through gRPC's local credentials, which lets the server check
  // the token on the headers (an AuthMetadataProcessor needs "secure" credentials).
  if (!id)
    return local_tcp_host(host_of(target)) ? grpc::experimental::LocalCredentials(LOCAL_TCP)
                                           : grpc::InsecureChannelCredentials();
  args.SetSslTargetNameOverride(kTlsServerName);
  grpc::SslCredentialsOptions o;
  o.pem_root_certs = id->ca_pem;
  o.pem_private_key = id->key_pem;
  o.pem_cert_chain = id->cert_pem;
  return grpc::SslCredentials(o);
}

ServerListeners::ServerListeners() = default;
ServerListeners::~ServerListeners() = default;

void ServerListeners::stop() {
  for (auto& g : gates_) g->stop();
}

void ServerListeners::stop_accepting() {
  for (auto& g : gates_) g->stop_accepting();
}

int ServerListeners::open_connections() const {
  int n = 0;
  for (const auto& g : gates_) n += g->counts().open;
  return n;
}

uint64_t ServerListeners::refused_connections() const {
  uint64_t n = 0;
  for (const auto& g : gates_) n += g->counts().refused;
  return n;
}

uint64_t ServerListeners::evicted_connections() const {
  uint64_t n = 0;
  for (const auto& g : gates_) n += g->counts().evicted;
  return n;
}

void add_listening_port(grpc::ServerBuilder& builder, const std::string& listen, int* port,
                        const ServerLimits& limits, ServerListeners* listeners) {
  std::shared_ptr<grpc::ServerCredentials> creds;
  const bool unix_socket = is_unix_address(listen);
  if (unix_socket) {
    creds = grpc::experimental::LocalServerCredentials(UDS);
  } else if (auto id = current_tls()) {
    grpc::SslServerCredentialsOptions o(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    o.pem_root_certs = id->ca_pem;
    o.pem_key_cert_pairs.push_back({id->key_pem, id->cert_pem});
    creds = grpc::SslServerCredentials(o);
  } else if (local_tcp_host(host_of(listen))) {
    creds = grpc::experimental::LocalServerCredentials(LOCAL_TCP);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  bool secure = unix_socket || current_tls() || local_tcp_host(host_of(listen));
  if (secure && !limits.token.empty())
    creds->SetAuthMetadataProcessor(std::make_shared<TokenCheck>(limits.token, limits.on_reject));
  if (unix_socket) {
    builder.AddListeningPort(listen, creds, port);
    return;
  }
  std::unique_ptr<detail::ConnectionGate> gate;
  try {
    gate =
        std::make_unique<detail::ConnectionGate>(listen, limits.max_connections, limits.on_warning);
  } catch (const IoError&) {
    *port = 0;  // the caller reports that it cannot listen on `listen`
    return;
  }
  gate->start(builder.experimental().AddExternalConnectionAcceptor(
      grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD, creds));
  *port = gate->port();
  listeners->gates_.push_back(std::move(gate));
}

void configure_server(grpc::ServerBuilder& builder, const std::string& listen, int* port,
                      const ServerLimits& limits, ServerListeners* listeners) {
  add_listening_port(builder, listen, port, limits, listeners);
  builder.SetMaxReceiveMessageSize(static_cast<int>(limits.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(limits.max_message_bytes));
  // Without this, a second server could silently share an explicit port (SO_REUSEPORT).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, limits.max_concurrent_streams);
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                             static_cast<int>(limits.handshake_timeout_ms));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, static_cast<int>(limits.max_idle_ms));
  grpc::ResourceQuota quota("ptrain-server");
  quota.Resize(static_cast<size_t>(limits.memory_bytes));
  builder.SetResourceQuota(quota);
}

}  // namespace ptrain::rendezvous
