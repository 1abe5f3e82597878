//! Build stages: a view of the instruction list split at each FROM.

use crate::Dockerfile;
use crate::instruction::{Command, Instruction};

/// One build stage: its FROM and the instructions up to the next FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage<'a> {
    /// 0-based position among the stages (what `COPY --from=0` refers to).
    pub index: usize,
    /// The lowercase `AS` name, if any.
    pub name: Option<String>,
    pub from: &'a Instruction,
    pub instructions: Vec<&'a Instruction>,
}

impl Dockerfile {
    /// The ARG instructions before the first FROM (their values are visible to FROM lines).
    pub fn global_args(&self) -> Vec<&Instruction> {
        self.instructions
            .iter()
            .take_while(|i| !matches!(i.command, Command::From { .. }))
            .filter(|i| matches!(i.command, Command::Arg(_)))
            .collect()
    }

    pub fn stages(&self) -> Vec<Stage<'_>> {
        let mut stages: Vec<Stage<'_>> = Vec::new();
        for instruction in &self.instructions {
            if let Command::From { name, .. } = &instruction.command {
                stages.push(Stage {
                    index: stages.len(),
                    name: name.clone(),
                    from: instruction,
                    instructions: Vec::new(),
                });
            } else if let Some(stage) = stages.last_mut() {
                stage.instructions.push(instruction);
            }
        }
        stages
    }
}
