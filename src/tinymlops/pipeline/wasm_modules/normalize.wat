;; normalize.wat — a tinymlops WebAssembly stage (ABI v1, see docs/wasm-abi.md).
;;
;;   y = (x - mean) * inv_std        for every float32 x of the buffer, in place
;;
;; Parameters (float32, written by the host into a region from `alloc`, passed to `configure`):
;;   [mean, std]        std > 0; `configure` stores mean and 1/std in the state area below.
;;
;; Memory map: bytes [0, 1024) are module state (16: mean, 20: inv_std); `alloc` hands out
;; 16-byte-aligned regions above 1024 from a bump pointer and grows memory when needed.
;; No imports: the module can touch nothing but its own linear memory.
(module
  (memory (export "memory") 1)
  (global (export "tinymlops_abi") i32 (i32.const 1))
  (global $heap (mut i32) (i32.const 1024))
  ;; defaults: mean 0.0, inv_std 1.0 (the identity until configured)
  (data (i32.const 16) "\00\00\00\00\00\00\80\3f")

  ;; alloc(nbytes) -> ptr: a fresh 16-byte-aligned region of nbytes, or 0 when memory cannot grow
  (func (export "alloc") (param $nbytes i32) (result i32)
    (local $ptr i32) (local $end i32) (local $have i32)
    (if (i32.lt_s (local.get $nbytes) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.const 15)) (i32.const -16)))
    (local.set $end (i32.add (local.get $ptr) (local.get $nbytes)))
    (if (i32.lt_u (local.get $end) (local.get $ptr)) (then (return (i32.const 0))))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                           (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  ;; configure(ptr, n) -> 0 | 1 (wrong number of parameters) | 2 (std is not > 0)
  (func (export "configure") (param $ptr i32) (param $n i32) (result i32)
    (local $std f32)
    (if (i32.ne (local.get $n) (i32.const 2)) (then (return (i32.const 1))))
    (local.set $std (f32.load offset=4 (local.get $ptr)))
    (if (i32.eqz (f32.gt (local.get $std) (f32.const 0))) (then (return (i32.const 2))))
    (f32.store (i32.const 16) (f32.load (local.get $ptr)))
    (f32.store (i32.const 20) (f32.div (f32.const 1) (local.get $std)))
    (i32.const 0))

  ;; process(ptr, n) -> 0. Three loops: 64 values (sixteen f32x4 vectors) per iteration while at
  ;; least 64 remain, then 4 at a time, then the last 0-3 one by one. The unrolling is for fuel
  ;; metering: wasmtime charges fuel per basic block, so one loop-back branch per 256 bytes makes
  ;; the metering nearly free (see "What a call costs" in docs/wasm-abi.md).
  (func (export "process") (param $ptr i32) (param $n i32) (result i32)
    (local $end i32) (local $end4 i32) (local $end64 i32)
    (local $mean f32) (local $inv f32) (local $m4 v128) (local $s4 v128)
    (local.set $mean (f32.load (i32.const 16)))
    (local.set $inv (f32.load (i32.const 20)))
    (local.set $m4 (f32x4.splat (local.get $mean)))
    (local.set $s4 (f32x4.splat (local.get $inv)))
    (local.set $end (i32.add (local.get $ptr) (i32.shl (local.get $n) (i32.const 2))))
    (local.set $end4
      (i32.add (local.get $ptr) (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2))))
    (local.set $end64
      (i32.add (local.get $ptr) (i32.shl (i32.and (local.get $n) (i32.const -64)) (i32.const 2))))
    (block $done64
      (loop $simd64
        (br_if $done64 (i32.ge_u (local.get $ptr) (local.get $end64)))
        (v128.store offset=0 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=0 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=16 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=16 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=32 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=32 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=48 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=48 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=64 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=64 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=80 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=80 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=96 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=96 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=112 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=112 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=128 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=128 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=144 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=144 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=160 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=160 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=176 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=176 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=192 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=192 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=208 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=208 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=224 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=224 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (v128.store offset=240 (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load offset=240 (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 256)))
        (br $simd64)))
    (block $done4
      (loop $simd4
        (br_if $done4 (i32.ge_u (local.get $ptr) (local.get $end4)))
        (v128.store (local.get $ptr)
          (f32x4.mul (f32x4.sub (v128.load (local.get $ptr)) (local.get $m4)) (local.get $s4)))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 16)))
        (br $simd4)))
    (block $done
      (loop $tail
        (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
        (f32.store (local.get $ptr)
          (f32.mul (f32.sub (f32.load (local.get $ptr)) (local.get $mean)) (local.get $inv)))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 4)))
        (br $tail)))
    (i32.const 0))
)
