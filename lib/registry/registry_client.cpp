#include "registry/registry_client.hpp"

#include <curl/curl.h>
#include <strings.h>

#include <algorithm>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <fmt/format.h>
#include <rapidjson/document.h>

#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint_version.h>

#include "fs/fs_util.hpp"

namespace nucleus::checkpoint::registry {

namespace {

// What of an error response is kept to quote: registries answer errors with a short JSON.
constexpr std::size_t max_error_body = 16 * 1024;
// What a blob stream receives ahead of its caller, at most (besides one callback's bytes, which
// curl holds while paused).
constexpr std::size_t max_blob_ahead = 1 << 20;

struct CurlDeleter {
  void operator()(CURL* curl) const noexcept { curl_easy_cleanup(curl); }
  void operator()(curl_slist* list) const noexcept { curl_slist_free_all(list); }
  void operator()(CURLU* url) const noexcept { curl_url_cleanup(url); }
  void operator()(char* text) const noexcept { curl_free(text); }
};
// Apart: CURL and CURLM are both void to C++.
struct MultiDeleter {
  void operator()(CURLM* multi) const noexcept { curl_multi_cleanup(multi); }
};

CURL* new_easy() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  CURL* curl = curl_easy_init();
  if (!curl) throw Error(Status::no_memory, "cannot start an HTTP request (libcurl)");
  return curl;
}

// curl_slist_append, freeing the list if it fails.
curl_slist* append_header(curl_slist* list, const char* header) {
  curl_slist* longer = curl_slist_append(list, header);
  if (longer) return longer;
  curl_slist_free_all(list);
  throw Error(Status::no_memory, "cannot build an HTTP request (libcurl)");
}

// A header's value if `line` is that header (names compare case-insensitively), trimmed.
std::optional<std::string> header_value(std::string_view line, std::string_view name) {
  if (line.size() <= name.size() || line[name.size()] != ':' ||
      ::strncasecmp(line.data(), name.data(), name.size()) != 0)
    return std::nullopt;
  std::string_view value = line.substr(name.size() + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' '))
    value.remove_suffix(1);
  return std::string(value);
}

// The registry's own words from an error body ({"errors":[{"code":..,"message":..}]}), else the
// body's start; printable, bounded.
std::string registry_says(const std::string& body) {
  rapidjson::Document doc;
  std::string said;
  if (!doc.Parse(body.data(), body.size()).HasParseError() && doc.IsObject() && doc.HasMember("errors") &&
      doc["errors"].IsArray()) {
    for (const auto& e : doc["errors"].GetArray()) {
      if (!e.IsObject()) continue;
      for (const char* field : {"code", "message"})
        if (e.HasMember(field) && e[field].IsString()) {
          // Two appends: GCC 12 at -O3 warns falsely (-Wrestrict) on a conditional literal + string.
          if (!said.empty()) said += ' ';
          said += e[field].GetString();
        }
      break;
    }
  }
  return quotable(said.empty() ? body : said);
}

}  // namespace

struct RegistryClient::Request {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers;
  // The body to send: from a descriptor or from memory.
  int upload_fd = -1;
  std::string_view upload_data;
  std::uint64_t upload_size = 0;
  std::uint64_t uploaded = 0;
  // Where a success's body goes, false to have curl hold the bytes and pause until resumed; without
  // one it is collected, up to max_body bytes.
  std::function<bool(const char*, std::size_t)> sink;
  std::size_t max_body = max_error_body;
  std::string what;  // for errors: "the manifest of REF"
};

struct RegistryClient::Response {
  long status = 0;
  std::string body;
  std::string content_type, location, docker_digest;
  bool too_large = false;
};

RegistryClient::RegistryClient(const ImageReference& ref, const RegistryOptions& options)
    : ref_(ref), options_(options) {}

std::string RegistryClient::url(std::string_view path) const {
  return fmt::format("{}://{}/v2/{}/{}", options_.insecure ? "http" : "https", ref_.host, ref_.repository, path);
}

// One request on its own curl handle, set up as every request is, and its callbacks' state (curl
// holds pointers to it: it does not move).
struct RegistryClient::Transfer {
  Transfer(Request& request, bool insecure);
  Transfer(const Transfer&) = delete;
  Transfer& operator=(const Transfer&) = delete;
  // The response, once curl has ended with `code`; a callback's failure, a body past its limit or a
  // failed transfer is thrown.
  Response finish(CURLcode code);

  Request& request;
  bool insecure;
  Response response;
  std::unique_ptr<CURL, CurlDeleter> curl{new_easy()};
  std::unique_ptr<curl_slist, CurlDeleter> headers;
  std::exception_ptr failure;
};

RegistryClient::Transfer::Transfer(Request& request, bool insecure) : request(request), insecure(insecure) {
  CURL* c = curl.get();
  curl_easy_setopt(c, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, insecure ? "http,https" : "https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, insecure ? "http,https" : "https");
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "nucleus-checkpoint/" NC_VERSION_STRING);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
  // A registry that stops sending or taking bytes for a minute is given up on.
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
  if (request.method == "GET" || request.method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
  }
  if (request.method == "HEAD") curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  if (request.method == "POST") {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(0));
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
  }
  if (request.method == "PUT") {
    curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(request.upload_size));
    curl_easy_setopt(c, CURLOPT_READDATA, this);
    curl_easy_setopt(
        c, CURLOPT_READFUNCTION, +[](char* buf, std::size_t size, std::size_t n, void* user) -> std::size_t {
          auto& t = *static_cast<Transfer*>(user);
          Request& r = t.request;
          const std::size_t want =
              static_cast<std::size_t>(std::min<std::uint64_t>(size * n, r.upload_size - r.uploaded));
          try {
            std::size_t got = want;
            if (r.upload_fd >= 0)
              got = pread_full(r.upload_fd, buf, want, r.uploaded, r.what);
            else
              std::copy_n(r.upload_data.data() + r.uploaded, want, buf);
            if (got != want) throw Error(Status::io, fmt::format("{} ended early while it was uploaded", r.what));
            r.uploaded += got;
            return got;
          } catch (...) {
            t.failure = std::current_exception();
            return CURL_READFUNC_ABORT;
          }
        });
  }
  // No "Expect: 100-continue" round trip before a body.
  curl_slist* list = nullptr;
  for (const std::string& h : request.headers) list = append_header(list, h.c_str());
  headers.reset(append_header(list, "Expect:"));
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers.get());

  curl_easy_setopt(c, CURLOPT_HEADERDATA, &response);
  curl_easy_setopt(
      c, CURLOPT_HEADERFUNCTION, +[](char* buf, std::size_t size, std::size_t n, void* user) -> std::size_t {
        auto& r = *static_cast<Response*>(user);
        const std::string_view line(buf, size * n);
        if (line.starts_with("HTTP/")) r = Response{};  // a new response (after a redirect): forget the last one's
        if (auto v = header_value(line, "Content-Type")) r.content_type = v->substr(0, v->find(';'));
        if (auto v = header_value(line, "Location")) r.location = *v;
        if (auto v = header_value(line, "Docker-Content-Digest")) r.docker_digest = *v;
        return size * n;
      });
  curl_easy_setopt(c, CURLOPT_WRITEDATA, this);
  curl_easy_setopt(
      c, CURLOPT_WRITEFUNCTION, +[](char* buf, std::size_t size, std::size_t n, void* user) -> std::size_t {
        auto& t = *static_cast<Transfer*>(user);
        long status = 0;
        curl_easy_getinfo(t.curl.get(), CURLINFO_RESPONSE_CODE, &status);
        const std::size_t bytes = size * n;
        if (status >= 200 && status < 300 && t.request.sink) {
          try {
            return t.request.sink(buf, bytes) ? bytes : CURL_WRITEFUNC_PAUSE;
          } catch (...) {
            t.failure = std::current_exception();
            return 0;
          }
        }
        const std::size_t limit = status >= 200 && status < 300 ? t.request.max_body : max_error_body;
        if (t.response.body.size() + bytes > limit) {
          t.response.too_large = status >= 200 && status < 300;
          if (t.response.too_large) return 0;
          return bytes;  // an error's body: its start is enough to quote
        }
        t.response.body.append(buf, bytes);
        return bytes;
      });
}

RegistryClient::Response RegistryClient::Transfer::finish(CURLcode code) {
  if (failure) std::rethrow_exception(failure);
  curl_easy_getinfo(curl.get(), CURLINFO_RESPONSE_CODE, &response.status);
  if (response.too_large)
    throw Error(Status::integrity,
                fmt::format("{} is larger than the {} bytes accepted; refused", request.what, request.max_body));
  if (code != CURLE_OK) {
    const bool tls =
        code == CURLE_SSL_CONNECT_ERROR || code == CURLE_PEER_FAILED_VERIFICATION || code == CURLE_UNSUPPORTED_PROTOCOL;
    throw Error(
        Status::io,
        fmt::format("cannot {} {} at {}: {}{}", request.method, request.what, request.url, curl_easy_strerror(code),
                    tls && !insecure ? " (a registry that speaks plain http, e.g. on localhost, needs --insecure)"
                                     : ""));
  }
  return std::move(response);
}

RegistryClient::Response RegistryClient::perform(Request& request) const {
  Transfer transfer(request, options_.insecure);
  return transfer.finish(curl_easy_perform(transfer.curl.get()));
}

namespace {

// Turns an unexpected HTTP status into an Error in the operator's terms.
[[noreturn]] void refuse(long status, const std::string& what, const std::string& url, const std::string& body,
                         const std::string& reference) {
  const std::string said = body.empty() ? "" : fmt::format(" (the registry says: {})", registry_says(body));
  if (status == 401 || status == 403)
    throw Error(Status::permission, fmt::format("the registry refused access to {} at {}: HTTP {}{}; only registries "
                                                "that allow anonymous access are supported",
                                                what, url, status, said));
  if (status == 404)
    throw Error(Status::not_found, fmt::format("{} is not in the registry: {} answered HTTP 404{}; check the image "
                                               "reference {}",
                                               what, url, said, reference));
  throw Error(Status::io, fmt::format("the registry failed {} at {}: HTTP {}{}", what, url, status, said));
}

}  // namespace

RegistryClient::Manifest RegistryClient::get_manifest(std::size_t max_size) const {
  Request r;
  r.url = url("manifests/" + ref_.manifest_name());
  // Indexes too, so that a multi-platform tag is named as such rather than "not found".
  r.headers = {
      fmt::format("Accept: {}, {}, application/vnd.oci.image.index.v1+json, "
                  "application/vnd.docker.distribution.manifest.list.v2+json",
                  oci_manifest_type, docker_manifest_type)};
  r.max_body = max_size;
  r.what = fmt::format("the manifest of {}", ref_.to_string());
  Response got = perform(r);
  if (got.status != 200) refuse(got.status, r.what, r.url, got.body, ref_.to_string());
  return {std::move(got.body), std::move(got.content_type)};
}

// What a blob stream holds: its request, its transfer on a multi handle of its own, and the bytes
// the write callback took for next() to hand out.
struct RegistryClient::BlobStream::State {
  State(const RegistryClient& client, Request r)
      : reference(client.ref_.to_string()), request(std::move(r)), transfer(request, client.options_.insecure) {}
  ~State() {
    if (multi) curl_multi_remove_handle(multi.get(), transfer.curl.get());
  }

  std::string reference;
  Request request;
  Transfer transfer;
  std::unique_ptr<CURLM, MultiDeleter> multi{curl_multi_init()};
  std::vector<char> received;
  bool paused = false, done = false;
};

RegistryClient::BlobStream::BlobStream(std::unique_ptr<State> state) : state_(std::move(state)) {}
RegistryClient::BlobStream::BlobStream(BlobStream&&) noexcept = default;
RegistryClient::BlobStream::~BlobStream() = default;

std::span<const char> RegistryClient::BlobStream::next() {
  State& s = *state_;
  s.received.clear();  // what the last call handed out is taken
  if (s.paused) {
    s.paused = false;
    // Hands the held bytes to the callback at once, or to the next curl_multi_perform.
    if (const CURLcode code = curl_easy_pause(s.transfer.curl.get(), CURLPAUSE_CONT); code != CURLE_OK)
      throw Error(Status::io, fmt::format("cannot GET {} at {}: {}", s.request.what, s.request.url,
                                          curl_easy_strerror(code)));
  }
  while (s.received.empty() && !s.done) {
    int running = 0;
    CURLMcode mc = curl_multi_perform(s.multi.get(), &running);
    if (mc == CURLM_OK && running == 0) {
      int queued = 0;
      CURLcode code = CURLE_OK;
      while (const CURLMsg* msg = curl_multi_info_read(s.multi.get(), &queued))
        if (msg->msg == CURLMSG_DONE) code = msg->data.result;
      s.done = true;
      const Response got = s.transfer.finish(code);
      if (got.status != 200) refuse(got.status, s.request.what, s.request.url, got.body, s.reference);
      break;
    }
    if (mc == CURLM_OK && s.received.empty()) mc = curl_multi_poll(s.multi.get(), nullptr, 0, 1000, nullptr);
    if (mc != CURLM_OK)
      throw Error(Status::io, fmt::format("cannot GET {} at {}: {}", s.request.what, s.request.url,
                                          curl_multi_strerror(mc)));
  }
  return s.received;
}

RegistryClient::BlobStream RegistryClient::get_blob(const std::string& digest) const {
  Request r;
  r.url = url("blobs/" + digest);
  r.what = fmt::format("the layer {} of {}", digest, ref_.to_string());
  auto state = std::make_unique<BlobStream::State>(*this, std::move(r));
  BlobStream::State& s = *state;
  s.received.reserve(max_blob_ahead);
  // Taken while what next() hands out stays within max_blob_ahead; else curl holds them, paused.
  s.request.sink = [&s](const char* data, std::size_t size) {
    s.paused = !s.received.empty() && s.received.size() + size > max_blob_ahead;
    if (!s.paused) s.received.insert(s.received.end(), data, data + size);
    return !s.paused;
  };
  if (!s.multi) throw Error(Status::no_memory, "cannot start an HTTP request (libcurl)");
  if (curl_multi_add_handle(s.multi.get(), s.transfer.curl.get()) != CURLM_OK)
    throw Error(Status::no_memory, "cannot start an HTTP request (libcurl)");
  return BlobStream(std::move(state));
}

bool RegistryClient::has_blob(const std::string& digest) const {
  Request r;
  r.method = "HEAD";
  r.url = url("blobs/" + digest);
  r.what = fmt::format("the blob {} of {}", digest, ref_.to_string());
  const Response got = perform(r);
  if (got.status == 404) return false;
  if (got.status != 200) refuse(got.status, r.what, r.url, got.body, ref_.to_string());
  return true;
}

void RegistryClient::upload(const std::string& digest, Request& put) const {
  if (has_blob(digest)) return;
  Request post;
  post.method = "POST";
  post.url = url("blobs/uploads/");
  post.what = fmt::format("an upload to {}", ref_.to_string());
  const Response started = perform(post);
  if (started.status != 202 || started.location.empty())
    refuse(started.status, post.what, post.url, started.body, ref_.to_string());
  // The upload's URL, relative to the registry's or absolute, with the digest added to its query.
  std::unique_ptr<CURLU, CurlDeleter> u(curl_url());
  if (!u || curl_url_set(u.get(), CURLUPART_URL, post.url.c_str(), 0) != CURLUE_OK ||
      curl_url_set(u.get(), CURLUPART_URL, started.location.c_str(), 0) != CURLUE_OK ||
      curl_url_set(u.get(), CURLUPART_QUERY, ("digest=" + digest).c_str(), CURLU_APPENDQUERY | CURLU_URLENCODE) !=
          CURLUE_OK)
    throw Error(Status::io, fmt::format("the registry gave an upload location that is not a URL: '{}'",
                                        quotable(started.location)));
  char* text = nullptr;
  if (curl_url_get(u.get(), CURLUPART_URL, &text, 0) != CURLUE_OK)
    throw Error(Status::no_memory, "cannot build the upload URL (libcurl)");
  const std::unique_ptr<char, CurlDeleter> owned(text);
  put.method = "PUT";
  put.url = text;
  put.headers = {"Content-Type: application/octet-stream"};
  put.what = fmt::format("the blob {} of {}", digest, ref_.to_string());
  const Response done = perform(put);
  if (done.status != 201) refuse(done.status, put.what, put.url, done.body, ref_.to_string());
}

void RegistryClient::put_blob(const std::string& digest, int fd, std::uint64_t size) const {
  Request put;
  put.upload_fd = fd;
  put.upload_size = size;
  upload(digest, put);
}

void RegistryClient::put_blob(const std::string& digest, std::string_view data) const {
  Request put;
  put.upload_data = data;
  put.upload_size = data.size();
  upload(digest, put);
}

std::string RegistryClient::put_manifest(std::string_view manifest, std::string_view media_type) const {
  Request put;
  put.method = "PUT";
  put.url = url("manifests/" + ref_.manifest_name());
  put.headers = {fmt::format("Content-Type: {}", media_type)};
  put.upload_data = manifest;
  put.upload_size = manifest.size();
  put.what = fmt::format("the manifest of {}", ref_.to_string());
  const Response done = perform(put);
  if (done.status != 201) refuse(done.status, put.what, put.url, done.body, ref_.to_string());
  return done.docker_digest;
}

}  // namespace nucleus::checkpoint::registry
