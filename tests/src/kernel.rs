//! For the tests that run the kernel program under BPF_PROG_TEST_RUN (`portguard::judge`).

use portguard::{
    judge::Judge,
    policy::{LoadOptions, compile::compile, parse},
};

/// The kernel program loaded with `policy` (the text of a policy file), not attached anywhere.
pub fn judge(policy: &str) -> Judge {
    let loaded = parse(policy, std::path::Path::new("test.toml"), LoadOptions::default()).expect("policy");
    let image = compile(&loaded.policy, 1).expect("compile");
    Judge::new(&image, &loaded.policy).expect("load the kernel program")
}

/// A map of the judge's own program, opened again by id (the way a separate process opens it).
pub fn own_map(j: &Judge, name: &str) -> aya::maps::MapData {
    let id = match j.ebpf().map(name).expect(name) {
        aya::maps::Map::Array(data)
        | aya::maps::Map::LruHashMap(data)
        | aya::maps::Map::HashMap(data)
        | aya::maps::Map::RingBuf(data) => data.info().unwrap().id(),
        _ => panic!("{name}: unexpected type"),
    };
    aya::maps::MapData::from_id(id).unwrap()
}

/// Every record of type `T` waiting in the judge's ring buffer `name`, oldest first.
pub fn drain_ring<T>(j: &mut Judge, name: &str) -> Vec<T> {
    let map = j.ebpf_mut().map_mut(name).expect(name);
    let mut ring = aya::maps::RingBuf::try_from(map).expect("a ring buffer");
    let mut records = Vec::new();
    // Bounded: the rings hold far fewer records than this.
    for _ in 0..100_000 {
        let Some(item) = ring.next() else { break };
        assert_eq!(item.len(), size_of::<T>(), "{name}: a record of another size");
        // SAFETY: the kernel writes whole `T`s (repr(C), plain data); read unaligned.
        records.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
    }
    records
}
