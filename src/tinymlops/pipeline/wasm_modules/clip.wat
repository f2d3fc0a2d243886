;; clip.wat — a tinymlops WebAssembly stage (ABI v1, see docs/wasm-abi.md).
;;
;;   y = min(max(x, lo), hi)         for every float32 x of the buffer, in place (NaN stays NaN)
;;
;; Parameters (float32, passed to `configure`): [lo, hi] with lo <= hi.
;; Memory map: bytes [0, 1024) are module state (16: lo, 20: hi); `alloc` is a bump allocator.
(module
  (memory (export "memory") 1)
  (global (export "tinymlops_abi") i32 (i32.const 1))
  (global $heap (mut i32) (i32.const 1024))
  ;; defaults: lo = -inf, hi = +inf (the identity until configured)
  (data (i32.const 16) "\00\00\80\ff\00\00\80\7f")

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

  ;; configure(ptr, n) -> 0 | 1 (wrong number of parameters) | 2 (lo > hi or NaN)
  (func (export "configure") (param $ptr i32) (param $n i32) (result i32)
    (local $lo f32) (local $hi f32)
    (if (i32.ne (local.get $n) (i32.const 2)) (then (return (i32.const 1))))
    (local.set $lo (f32.load (local.get $ptr)))
    (local.set $hi (f32.load offset=4 (local.get $ptr)))
    (if (i32.eqz (f32.le (local.get $lo) (local.get $hi))) (then (return (i32.const 2))))
    (f32.store (i32.const 16) (local.get $lo))
    (f32.store (i32.const 20) (local.get $hi))
    (i32.const 0))

  (func (export "process") (param $ptr i32) (param $n i32) (result i32)
    (local $end i32) (local $end4 i32)
    (local $lo f32) (local $hi f32) (local $lo4 v128) (local $hi4 v128) (local $x f32)
    (local.set $lo (f32.load (i32.const 16)))
    (local.set $hi (f32.load (i32.const 20)))
    (local.set $lo4 (f32x4.splat (local.get $lo)))
    (local.set $hi4 (f32x4.splat (local.get $hi)))
    (local.set $end (i32.add (local.get $ptr) (i32.shl (local.get $n) (i32.const 2))))
    (local.set $end4
      (i32.add (local.get $ptr) (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2))))
    (block $done4
      (loop $simd
        (br_if $done4 (i32.ge_u (local.get $ptr) (local.get $end4)))
        (v128.store (local.get $ptr)
          (f32x4.min (f32x4.max (v128.load (local.get $ptr)) (local.get $lo4)) (local.get $hi4)))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 16)))
        (br $simd)))
    (block $done
      (loop $tail
        (br_if $done (i32.ge_u (local.get $ptr) (local.get $end)))
        (f32.store (local.get $ptr)
          (f32.min (f32.max (f32.load (local.get $ptr)) (local.get $lo)) (local.get $hi)))
        (local.set $ptr (i32.add (local.get $ptr) (i32.const 4)))
        (br $tail)))
    (i32.const 0))
)
