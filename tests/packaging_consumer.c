/* A C consumer of the packaged library, for tests/packaging_test.sh: linked statically through
 * `pkg-config --static`, or built by a parent meson project with the library as a subproject. It
 * reaches the whole core: the version, then sign (key created, libsodium, libcrypto, fmt), verify,
 * and a tampered file refused. Usage: packaging_consumer EMPTY_0700_DIR */
#define _POSIX_C_SOURCE 200809L  /* setenv */
#include <nucleus/checkpoint.h>
#include <nucleus/checkpoint_version.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int fail(const char *what, nc_status s) {
  fprintf(stderr, "packaging_consumer: %s: status %d: %s\n", what, (int)s, nc_last_error());
  return 1;
}

static int write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  int bad = fputs(text, f) < 0;
  return (fclose(f) != 0 || bad) ? -1 : 0;
}

/* buf = dir/name; 0 if it does not fit. */
static int join(char *buf, size_t size, const char *dir, const char *name) {
  int n = snprintf(buf, size, "%s/%s", dir, name);
  return n >= 0 && (size_t)n < size;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s EMPTY_0700_DIR\n", argv[0]);
    return 2;
  }
  if (strcmp(nc_version_string(), NC_VERSION_STRING) != 0) {
    fprintf(stderr, "packaging_consumer: library %s, header %s\n", nc_version_string(), NC_VERSION_STRING);
    return 1;
  }
  char keys[4096], key[4096], dir[4096], file[4096];
  if (!join(keys, sizeof keys, argv[1], "keys") || !join(key, sizeof key, keys, "key") ||
      !join(dir, sizeof dir, argv[1], "ckpt") || !join(file, sizeof file, dir, "data")) {
    fprintf(stderr, "packaging_consumer: %s: path too long\n", argv[1]);
    return 2;
  }
  if (mkdir(keys, 0700) != 0 || mkdir(dir, 0700) != 0 || write_file(file, "payload\n") != 0) {
    perror("packaging_consumer: setup");
    return 1;
  }
  setenv("NUCLEUS_CHECKPOINT_HMAC_KEY_FILE", key, 1);
  nc_status s = nc_sign_ex(dir, NC_SIGNATURE_CHUNKED, NULL, NULL);
  if (s != NC_OK) return fail("sign", s);
  if ((s = nc_verify(dir)) != NC_OK) return fail("verify", s);
  if (write_file(file, "Payload\n") != 0) {
    perror("packaging_consumer: tamper");
    return 1;
  }
  if ((s = nc_verify(dir)) != NC_E_INTEGRITY) return fail("verify of a tampered file (expected NC_E_INTEGRITY)", s);
  printf("packaging_consumer: libnucleuscheckpoint %s signed, verified, refused a tampered file\n", nc_version_string());
  return 0;
}
