/* Startup code for Kiln's Cortex-M test harness: vector table, reset handler (copy .data,
 * clear .bss, enable the FPU when there is one), SysTick wrap counting, semihosting. */
#include <stdint.h>
#include "kiln_semihost.h"

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end, __stack_top;
extern int main(void);

volatile uint32_t kiln_systick_wraps;

void Reset_Handler(void);
void Fault_Handler(void);
void SysTick_Handler(void);

__attribute__((section(".vectors"), used))
void (*const kiln_vectors[16])(void) = {
  (void (*)(void))&__stack_top, Reset_Handler,
  Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,  /* NMI..UsageFault */
  0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler, SysTick_Handler,
};

void Reset_Handler(void) {
  uint32_t* src = &__data_load;
  for (uint32_t* dst = &__data_start; dst < &__data_end;) *dst++ = *src++;
  for (uint32_t* dst = &__bss_start; dst < &__bss_end;) *dst++ = 0;
#if defined(__ARM_FP) || defined(__ARM_FEATURE_MVE)
  /* CPACR: full access to CP10/CP11 (FPU and Helium) */
  *(volatile uint32_t*)0xE000ED88u |= 0xFu << 20;
  __asm volatile("dsb\n isb" ::: "memory");
#endif
  kiln_sh_exit(main() == 0);
}

void Fault_Handler(void) {
  kiln_sh_write0("kiln: hard fault\n");
  kiln_sh_exit(0);
}

void SysTick_Handler(void) { kiln_systick_wraps++; }
