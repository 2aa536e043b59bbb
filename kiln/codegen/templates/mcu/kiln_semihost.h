/* Arm semihosting calls (BKPT 0xAB on M-profile): what Kiln's harness needs to read
 * inputs and write outputs as files on the host, print, and exit. */
#ifndef KILN_SEMIHOST_H
#define KILN_SEMIHOST_H
#include <stdint.h>

static inline int32_t kiln_sh_call(int32_t op, const void* arg) {
  register int32_t r0 __asm__("r0") = op;
  register const void* r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

static inline void kiln_sh_write0(const char* s) { kiln_sh_call(0x04, s); }

/* mode: 1 = "rb", 5 = "wb" */
static inline int32_t kiln_sh_open(const char* path, int32_t mode) {
  int32_t len = 0;
  while (path[len]) ++len;
  const uint32_t args[3] = {(uint32_t)(uintptr_t)path, (uint32_t)mode, (uint32_t)len};
  return kiln_sh_call(0x01, args);
}

/* returns the number of bytes NOT transferred (0 on success) */
static inline int32_t kiln_sh_read(int32_t fd, void* buf, uint32_t n) {
  const uint32_t args[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)buf, n};
  return kiln_sh_call(0x06, args);
}

static inline int32_t kiln_sh_write(int32_t fd, const void* buf, uint32_t n) {
  const uint32_t args[3] = {(uint32_t)fd, (uint32_t)(uintptr_t)buf, n};
  return kiln_sh_call(0x05, args);
}

static inline int32_t kiln_sh_flen(int32_t fd) {
  const uint32_t args[1] = {(uint32_t)fd};
  return kiln_sh_call(0x0C, args);
}

static inline void kiln_sh_close(int32_t fd) {
  const uint32_t args[1] = {(uint32_t)fd};
  kiln_sh_call(0x02, args);
}

/* ADP_Stopped_ApplicationExit (QEMU exits 0) or ADP_Stopped_RunTimeErrorUnknown (exits 1) */
__attribute__((noreturn)) static inline void kiln_sh_exit(int ok) {
  kiln_sh_call(0x18, (const void*)(uintptr_t)(ok ? 0x20026 : 0x20023));
  for (;;) {}
}
#endif
