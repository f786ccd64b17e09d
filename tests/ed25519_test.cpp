// Ed25519 signatures: the keys and their files, the trust folder, and that a host holding only
// the signer's public key verifies its checkpoints but cannot make one the signer's verifier
// accepts. Each "host" is a key folder of its own (KeyStore(path): the Ed25519 key and the trust
// folder beside its HMAC key). The suite runs as root (chown to another uid).
#include "test_support.hpp"

#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <latch>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nucleus/checkpoint/ed25519.hpp>
#include <nucleus/checkpoint/error.hpp>
#include <nucleus/checkpoint/hmac_tree.hpp>
#include <nucleus/checkpoint/key_store.hpp>

#include "fs/fs_util.hpp"
#include "signature/chunked_signature.hpp"
#include "signature/signed_manifest.hpp"

using namespace nucleus::checkpoint;
using namespace nucleus::checkpoint::test;

namespace {

// A host's keys: a 0700 folder of its own, the HMAC key's path in it, the rest beside.
struct Host {
  Host(const TempDir& tmp, const std::string& name) : keys(private_dir(tmp / name)), store(keys / "checkpoint-hmac.key") {}
  static fs::path private_dir(const fs::path& dir) {
    fs::create_directory(dir);
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace);
    return dir;
  }
  fs::path keys;
  KeyStore store;
};

// A small checkpoint-like folder: nested folders, an image of several chunks' worth at 1 MiB, an
// empty file.
fs::path make_checkpoint(const TempDir& tmp, const std::string& name = "cp") {
  const fs::path dir = tmp / name;
  fs::create_directories(dir / "images" / "nested");
  write_file(dir / "images" / "pages-1.img", bytes_of_size(3 * 1024 * 1024 + 17));
  write_file(dir / "images" / "nested" / "core.img", bytes_of_size(4096, 7));
  write_file(dir / "metadata.json", "{\"container_id\":\"c\"}");
  write_file(dir / "empty", "");
  return dir;
}

// checkpoint.hmac with its ed25519 line's key id replaced by `id`.
void replace_key_id(const fs::path& dir, const std::string& id) {
  std::string text = read_file(dir / HmacTree::signature_file);
  const auto at = text.find("\ned25519 ");
  REQUIRE(at != std::string::npos);
  text.replace(at + 9, id.size(), id);
  write_file(dir / HmacTree::signature_file, text);
}

const SignatureFormat chunked_formats[] = {SignatureFormat::chunked, SignatureFormat::manifest};

}  // namespace

TEST_CASE("an Ed25519-signed checkpoint verifies on a host that holds only the signer's public key", "[ed25519]") {
  TempDir tmp;
  Host source(tmp, "source"), receiver(tmp, "receiver");
  const SignatureFormat format = GENERATE(SignatureFormat::chunked, SignatureFormat::manifest);
  const fs::path dir = make_checkpoint(tmp);
  const Ed25519SecretKey key = source.store.load_or_create_ed25519();
  HmacTree::sign_as(dir, key, format);
  CHECK(HmacTree::format_of(dir) == format);
  const CheckpointSigner signer = HmacTree::signer_of(dir);
  CHECK(signer.kind == SignatureKind::ed25519);
  CHECK(signer.key_id == key.public_key().id_hex());

  // The source trusts its own key from the start; the receiver once given the public key alone.
  REQUIRE_NOTHROW(HmacTree::verify(dir, source.store));
  receiver.store.trust(key.public_key());
  REQUIRE_NOTHROW(HmacTree::verify(dir, receiver.store));
  CHECK_FALSE(receiver.store.exists());          // no HMAC key
  CHECK_FALSE(receiver.store.ed25519_exists());  // no secret key
  if (format == SignatureFormat::manifest) {
    // The streamed restore's path: the manifest authenticated with the trusted key.
    const UniqueFd fd = open_dir(dir, "checkpoint");
    const std::optional<SignedManifest> manifest = SignedManifest::load(fd.get(), receiver.store);
    REQUIRE(manifest.has_value());
    CHECK(manifest->files().size() == 4);
  }
}

TEST_CASE("the receiver cannot make a signature the source's verifier accepts", "[ed25519]") {
  TempDir tmp;
  Host source(tmp, "source"), receiver(tmp, "receiver");
  const SignatureFormat format = GENERATE(SignatureFormat::chunked, SignatureFormat::manifest);
  const fs::path dir = make_checkpoint(tmp);
  const Ed25519SecretKey source_key = source.store.load_or_create_ed25519();
  (void)source.store.load_or_create();  // the source has an HMAC key of its own too
  HmacTree::sign_as(dir, source_key, format);
  receiver.store.trust(source_key.public_key());
  flip_byte(dir / "images" / "pages-1.img", 2 * 1024 * 1024 + 5);  // the receiver's change

  SECTION("re-signed with the receiver's own new Ed25519 key: a key the source does not trust") {
    const Ed25519SecretKey own = receiver.store.load_or_create_ed25519();
    HmacTree::sign_as(dir, own, format);
    REQUIRE_NOTHROW(HmacTree::verify(dir, receiver.store));  // it trusts itself
    const Error e = require_error([&] { HmacTree::verify(dir, source.store); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), own.public_key().id_hex()));
    CHECK(contains(e.what(), source.store.trust_dir().native()));
    CHECK(contains(e.what(), "does not trust"));
  }
  SECTION("re-signed with the receiver's own HMAC key") {
    HmacTree::sign_as(dir, receiver.store.load_or_create(), format);
    const Error e = require_error([&] { HmacTree::verify(dir, source.store); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), "HMAC mismatch"));
  }
  SECTION("re-signed with the receiver's own key under the source's key id") {
    HmacTree::sign_as(dir, receiver.store.load_or_create_ed25519(), format);
    replace_key_id(dir, source_key.public_key().id_hex());
    const Error e = require_error([&] { HmacTree::verify(dir, source.store); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), "Ed25519 signature mismatch"));
  }
  SECTION("the source's signature kept over the changed folder") {
    const Error e = require_error([&] { HmacTree::verify(dir, source.store); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), format == SignatureFormat::manifest ? "differs from what was signed"
                                                                 : "Ed25519 signature mismatch"));
  }
}

TEST_CASE("a signature is refused when a key id is swapped, or when its key is not trusted", "[ed25519]") {
  TempDir tmp;
  Host verifier(tmp, "verifier"), a(tmp, "a"), b(tmp, "b");
  const fs::path dir = make_checkpoint(tmp);
  const Ed25519SecretKey a_key = a.store.load_or_create_ed25519(), b_key = b.store.load_or_create_ed25519();
  verifier.store.trust(a_key.public_key());
  verifier.store.trust(b_key.public_key());
  HmacTree::sign_as(dir, a_key, SignatureFormat::manifest);
  REQUIRE_NOTHROW(HmacTree::verify(dir, verifier.store));

  SECTION("a's signature named as b's, both trusted") {
    replace_key_id(dir, b_key.public_key().id_hex());
    const Error e = require_error([&] { HmacTree::verify(dir, verifier.store); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), "Ed25519 signature mismatch"));
  }
  SECTION("a key id no trusted key has") {
    replace_key_id(dir, std::string(32, '0'));
    const Error e = require_error([&] { HmacTree::verify(dir, verifier.store); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), std::string(32, '0')));
    CHECK(contains(e.what(), "trust add"));
  }
  SECTION("signed by a key that is not in the trust folder") {
    Host c(tmp, "c");
    HmacTree::sign_as(dir, c.store.load_or_create_ed25519(), SignatureFormat::chunked);
    const Error e = require_error([&] { HmacTree::verify(dir, verifier.store); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), HmacTree::signer_of(dir).key_id));
    CHECK(contains(e.what(), verifier.store.trust_dir().native()));
  }
  SECTION("no trust folder at all") {
    Host empty(tmp, "empty");
    const Error e = require_error([&] { HmacTree::verify(dir, empty.store); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), "there is no trust folder"));
  }
}

TEST_CASE("a trust folder others could change, or holding a symlink, is refused", "[ed25519]") {
  REQUIRE(::geteuid() == 0);  // chown to another uid
  TempDir tmp;
  Host signer(tmp, "signer"), verifier(tmp, "verifier");
  const fs::path dir = make_checkpoint(tmp);
  const Ed25519SecretKey key = signer.store.load_or_create_ed25519();
  HmacTree::sign_as(dir, key, SignatureFormat::manifest);
  const fs::path trusted = verifier.store.trust(key.public_key());
  const fs::path folder = verifier.store.trust_dir();
  REQUIRE(trusted.parent_path() == folder);
  REQUIRE(fs::status(trusted).permissions() == (fs::perms::owner_read | fs::perms::owner_write |
                                                 fs::perms::group_read | fs::perms::others_read));
  REQUIRE_NOTHROW(HmacTree::verify(dir, verifier.store));
  std::string part;
  SECTION("the folder writable by others") {
    fs::permissions(folder, fs::perms::others_write, fs::perm_options::add);
    part = "others can change";
  }
  SECTION("the folder writable by its group") {
    fs::permissions(folder, fs::perms::group_write, fs::perm_options::add);
    part = "chmod go-w";
  }
  SECTION("the folder owned by another user") {
    REQUIRE(::chown(folder.c_str(), 12345, 0) == 0);
    part = "owned by uid 12345";
  }
  SECTION("a key file writable by others") {
    fs::permissions(trusted, fs::perms::others_write, fs::perm_options::add);
    part = trusted.native();
  }
  SECTION("a key file owned by another user") {
    REQUIRE(::chown(trusted.c_str(), 12345, 0) == 0);
    part = "owned by uid 12345";
  }
  SECTION("a key file that is a symlink") {
    fs::rename(trusted, tmp / "elsewhere.pub");
    fs::create_symlink(tmp / "elsewhere.pub", trusted);
    part = "symlink";
  }
  SECTION("the folder a symlink to a good folder") {
    fs::rename(folder, tmp / "real-trusted-keys");
    fs::create_directory_symlink(tmp / "real-trusted-keys", folder);
    part = "trust folder";
  }
  SECTION("a malformed key file") {
    write_file(folder / "other.pub", "nucleus-checkpoint-ed25519-public 1\nNOT HEX\n");
    part = "not an Ed25519 public key file";
  }
  SECTION("a key file larger than a public key file may be") {
    write_file(folder / "big.pub", std::string(Ed25519PublicKey::max_file_size + 1, 'a'));
    part = "more than the 4096";
  }
  SECTION("more entries than the folder may hold") {
    for (std::size_t i = 0; i <= KeyStore::max_trusted_entries; ++i) write_file(folder / fmt::format("n{}", i), "");
    part = "more than 1024 entries";
  }
  const Error e = require_error([&] { HmacTree::verify(dir, verifier.store); });
  CHECK(e.status() == Status::key);
  INFO(e.what());
  CHECK(contains(e.what(), part));
}

TEST_CASE("files in the trust folder that are not *.pub are left alone", "[ed25519]") {
  TempDir tmp;
  Host signer(tmp, "signer"), verifier(tmp, "verifier");
  const fs::path dir = make_checkpoint(tmp);
  const Ed25519SecretKey key = signer.store.load_or_create_ed25519();
  HmacTree::sign_as(dir, key, SignatureFormat::chunked);
  const fs::path folder = verifier.store.trust(key.public_key()).parent_path();
  write_file(folder / "README", "not a key");
  write_file(folder / ".hidden.pub", "not a key either");
  REQUIRE_NOTHROW(HmacTree::verify(dir, verifier.store));
}

TEST_CASE("the seed format is HMAC-only: Ed25519 is refused there, and nothing is written", "[ed25519]") {
  TempDir tmp;
  Host host(tmp, "host");
  const fs::path dir = make_checkpoint(tmp);
  const Error e = require_error([&] { HmacTree::sign_as(dir, host.store.load_or_create_ed25519(), SignatureFormat::seed); });
  CHECK(e.status() == Status::invalid);
  CHECK(contains(e.what(), "HMAC-only"));
  CHECK_FALSE(fs::exists(dir / HmacTree::signature_file));
}

TEST_CASE("the Ed25519 key file follows the HMAC key's rules", "[ed25519]") {
  REQUIRE(::geteuid() == 0);
  TempDir tmp;
  Host host(tmp, "host");
  const fs::path path = host.store.ed25519_path();
  REQUIRE(path == host.keys / "checkpoint-ed25519.key");
  const Ed25519SecretKey key = host.store.load_or_create_ed25519();
  REQUIRE(fs::file_size(path) == Ed25519SecretKey::size);
  CHECK((fs::status(path).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write));
  CHECK(host.store.load_ed25519().public_key().bytes() == key.public_key().bytes());
  CHECK(host.store.load_or_create_ed25519().public_key().bytes() == key.public_key().bytes());
  // Created, and so trusted here.
  CHECK(fs::exists(host.store.trust_dir() / (key.public_key().id_hex() + ".pub")));
  const std::string bytes = read_file(path);

  SECTION("its 32-byte seed loads as the same key") {
    fs::remove(path);
    write_file(path, bytes.substr(0, Ed25519SecretKey::seed_size));
    fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
    CHECK(host.store.load_ed25519().public_key().bytes() == key.public_key().bytes());
  }
  std::string part;
  SECTION("a public half that is not the seed's") {
    flip_byte(path, 40);
    part = "damaged";
  }
  SECTION("a size that is neither a key nor a seed") {
    write_file(path, bytes + "x");
    part = "not an Ed25519 key file";
  }
  SECTION("readable by its group") {
    fs::permissions(path, fs::perms::group_read, fs::perm_options::add);
    part = "insecure mode";
  }
  SECTION("owned by another user") {
    REQUIRE(::chown(path.c_str(), 12345, 0) == 0);
    part = "owned by uid 12345";
  }
  SECTION("a symlink to a good key") {
    fs::rename(path, host.keys / "real.key");
    fs::create_symlink(host.keys / "real.key", path);
    part = "symlink";
  }
  SECTION("missing") {
    fs::remove(path);
    part = "keygen --ed25519";
  }
  if (part.empty()) return;
  const Error e = require_error([&] { (void)host.store.load_ed25519(); });
  CHECK(e.status() == Status::key);
  INFO(e.what());
  CHECK(contains(e.what(), part));
}

TEST_CASE("two concurrent creators of a fresh Ed25519 key agree on one key", "[ed25519]") {
  TempDir tmp;
  Host host(tmp, "host");
  std::latch start(2);
  std::vector<std::optional<Ed25519PublicKey>> made(2);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < 2; ++i)
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      made[i] = host.store.load_or_create_ed25519().public_key();
    });
  for (auto& t : threads) t.join();
  REQUIRE(made[0].has_value());
  REQUIRE(made[1].has_value());
  CHECK(made[0]->bytes() == made[1]->bytes());
  CHECK(made[0]->bytes() == host.store.load_ed25519().public_key().bytes());
}

TEST_CASE("an Ed25519 secret key is held as key material: the process is not dumpable meanwhile", "[ed25519]") {
  REQUIRE(::prctl(PR_SET_DUMPABLE, 1) == 0);
  {
    const Ed25519SecretKey key = Ed25519SecretKey::generate();
    CHECK(::prctl(PR_GET_DUMPABLE) == 0);
  }
  CHECK(::prctl(PR_GET_DUMPABLE) == 1);
}

TEST_CASE("public key files are read strictly", "[ed25519]") {
  const Ed25519PublicKey key = Ed25519SecretKey::generate().public_key();
  const std::string text = key.to_file_text();
  CHECK(Ed25519PublicKey::parse_file_text(text, "t").bytes() == key.bytes());
  std::string upper = text;
  for (std::size_t i = Ed25519PublicKey::file_header.size() + 1; i < upper.size(); ++i)
    upper[i] = static_cast<char>(std::toupper(static_cast<unsigned char>(upper[i])));
  const std::string bad = GENERATE_COPY(text.substr(0, text.size() - 1), text + "\n", upper,
                                        "nucleus-checkpoint-ed25519-public 2" + text.substr(35),
                                        text.substr(0, 36) + text.substr(38), std::string());
  const Error e = require_error([&] { (void)Ed25519PublicKey::parse_file_text(bad, "the file"); });
  CHECK(e.status() == Status::key);
  CHECK(contains(e.what(), "the file is not an Ed25519 public key file"));
}

TEST_CASE("the ed25519 signature line is written and parsed strictly", "[ed25519]") {
  ChunkedSignature s;
  s.format = SignatureFormat::chunked;
  s.kind = SignatureKind::ed25519;
  for (std::size_t i = 0; i < s.key_id.size(); ++i) s.key_id[i] = static_cast<unsigned char>(i);
  for (std::size_t i = 0; i < s.ed25519_signature.size(); ++i) s.ed25519_signature[i] = static_cast<unsigned char>(255 - i);
  const std::string text = s.to_text();
  CHECK(contains(text, "\ned25519 000102030405060708090a0b0c0d0e0f fffefdfc"));
  const ChunkedSignature parsed = ChunkedSignature::parse(text);
  CHECK(parsed.kind == SignatureKind::ed25519);
  CHECK(parsed.key_id == s.key_id);
  CHECK(parsed.ed25519_signature == s.ed25519_signature);
  const auto line = text.find("ed25519 ");
  const std::string bad = GENERATE_COPY(
      text.substr(0, line) + "ed25519 " + text.substr(line + 8 + 33),            // no key id
      text.substr(0, line + 8 + 32) + "  " + text.substr(line + 8 + 33),         // two spaces
      text.substr(0, text.size() - 3) + "\n",                                    // a digit short
      text.substr(0, text.size() - 1) + "0\n",                                   // a digit more
      text.substr(0, line + 8) + "A" + text.substr(line + 9),                    // upper case
      text + "extra\n");                                                         // a fourth line
  const Error e = require_error([&] { (void)ChunkedSignature::parse(bad); });
  CHECK(e.status() == Status::integrity);
  CHECK(contains(e.what(), "malformed"));
}

TEST_CASE("an Ed25519 signature is not an HMAC: the two kinds never verify as each other", "[ed25519]") {
  TempDir tmp;
  Host host(tmp, "host");
  const fs::path dir = make_checkpoint(tmp);
  const HmacKey hmac = host.store.load_or_create();
  HmacTree::sign_as(dir, host.store.load_or_create_ed25519(), SignatureFormat::chunked);
  // The line rewritten as an HMAC one (the signature's first 32 bytes as the MAC) is refused.
  std::string text = read_file(dir / HmacTree::signature_file);
  const auto at = text.find("ed25519 ");
  text = text.substr(0, at) + "hmac-sha256 " + text.substr(at + 8 + 33, 64) + "\n";
  write_file(dir / HmacTree::signature_file, text);
  const Error e = require_error([&] { HmacTree::verify(dir, hmac); });
  CHECK(contains(e.what(), "HMAC mismatch"));
}

TEST_CASE("trusting a key where there is no key folder yet makes it private, so the key store still loads",
          "[ed25519]") {
  TempDir tmp;
  const KeyStore store(tmp / "new" / "keys" / "checkpoint-hmac.key");
  const Ed25519PublicKey key = Ed25519SecretKey::generate().public_key();
  const fs::path file = store.trust(key);
  CHECK(file == store.trust_dir() / (key.id_hex() + ".pub"));
  CHECK((fs::status(tmp / "new" / "keys").permissions() & fs::perms::all) == fs::perms::owner_all);
  CHECK_NOTHROW(store.load_or_create());
  CHECK(store.trusted_key(key.id()).bytes() == key.bytes());
}

// A receiver that holds an HMAC key (its own checkpoints', or one copied there long ago) would
// accept what anyone else holding that key signs, unless it is told to take public keys alone.
TEST_CASE("NUCLEUS_CHECKPOINT_SIGNERS=ed25519 refuses every HMAC signature, and only those", "[ed25519]") {
  TempDir tmp;
  Host source(tmp, "source"), receiver(tmp, "receiver");
  const SignatureFormat format = GENERATE(SignatureFormat::seed, SignatureFormat::chunked, SignatureFormat::manifest);
  const fs::path hmac_signed = make_checkpoint(tmp, "hmac");
  HmacTree::sign_as(hmac_signed, receiver.store.load_or_create(), format);  // valid for the receiver's key
  const fs::path ed25519_signed = make_checkpoint(tmp, "ed25519");
  const Ed25519SecretKey key = source.store.load_or_create_ed25519();
  HmacTree::sign_as(ed25519_signed, key, SignatureFormat::manifest);
  receiver.store.trust(key.public_key());

  REQUIRE_NOTHROW(HmacTree::verify(hmac_signed, receiver.store));  // accepted by default
  {
    ScopedEnv only("NUCLEUS_CHECKPOINT_SIGNERS", "ed25519");
    const Error e = require_error([&] { HmacTree::verify(hmac_signed, receiver.store); });
    CHECK(e.status() == Status::integrity);
    CHECK(contains(e.what(), "accepts Ed25519 signatures only"));
    REQUIRE_NOTHROW(HmacTree::verify(ed25519_signed, receiver.store));
    // An HMAC key the caller hands in is its own choice.
    REQUIRE_NOTHROW(HmacTree::verify(hmac_signed, receiver.store.load()));
  }
  {
    ScopedEnv any("NUCLEUS_CHECKPOINT_SIGNERS", "any");
    REQUIRE_NOTHROW(HmacTree::verify(hmac_signed, receiver.store));
  }
  {
    ScopedEnv wrong("NUCLEUS_CHECKPOINT_SIGNERS", "ED25519");
    const Error e = require_error([&] { HmacTree::verify(hmac_signed, receiver.store); });
    CHECK(e.status() == Status::invalid);
    CHECK(contains(e.what(), "set it to ed25519"));
  }
}
