//! The fan-out job the scheduling benchmarks run (`schedule_bench`, and `archive_bench`'s
//! load beside a clean): t0, then t1..t(tasks-2) in parallel, then the last task after
//! them all. Included by each example with `#[path]` (an example is one crate).

/// The job file's tasks section of a fan-out of `tasks` tasks (three or more).
pub fn fanout_tasks(tasks: usize) -> String {
    let mut text = String::from("tasks:\n  - id: t0\n    image: stevedore/synth:0.1.0\n");
    let middle: Vec<String> = (1..tasks - 1).map(|i| format!("t{i}")).collect();
    for task in &middle {
        text.push_str(&format!(
            "  - id: {task}\n    image: stevedore/synth:0.1.0\n    depends_on: [t0]\n"
        ));
    }
    text.push_str(&format!(
        "  - id: t{}\n    image: stevedore/synth:0.1.0\n    depends_on: [{}]\n",
        tasks - 1,
        middle.join(", ")
    ));
    text
}
